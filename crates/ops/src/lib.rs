//! The operations view's data (`/ops`): one picture of the whole system, taken
//! from the processes themselves — every registered process's `/metrics` (and a
//! load balancer's members), the broker's own queue depths, the database's jobs —
//! never from a second bookkeeping that could drift. Two pictures a moment apart
//! give the rates.

pub mod scrape;
pub mod snapshot;

pub use snapshot::{Ops, Snapshot};

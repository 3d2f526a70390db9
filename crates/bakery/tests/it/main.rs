//! Black-box tests of the built `bakery` binary against real services.
//! One test binary (fast to link); one module per capability.

mod harness;
mod proxy;

mod accounts;
mod bad_input;
mod caches;
mod cli;
mod clones;
mod domain;
mod replicas;
mod lb;
mod overload;
mod sessions;

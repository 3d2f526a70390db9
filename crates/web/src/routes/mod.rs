//! One module per resource of the contract, each with its own `router()`.

pub mod accounts;
pub mod calendar;
pub mod catalog;
pub mod jobs;
pub mod notifications;
pub mod ops;
pub mod pages;
pub mod users;

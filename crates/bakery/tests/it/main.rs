//! Black-box tests of the built `bakery` binary against real services.
//! One test binary (fast to link); one module per capability.

// A panic is how a test reports a failure; helpers unwrap as tests do.
#![allow(clippy::unwrap_used)]

// The shared harness, under the names these modules know it by.
use bakery_testkit as harness;
use bakery_testkit::proxy;

mod accounts;
mod attacks;
mod bad_input;
mod bench;
mod browser;
mod caches;
mod cli;
mod clones;
mod documents;
mod domain;
mod edge;
mod hosts;
mod images;
mod jobs;
mod lb;
mod messaging;
mod openapi;
mod ops;
mod overload;
mod replicas;
mod roles;
mod sessions;
mod writes;

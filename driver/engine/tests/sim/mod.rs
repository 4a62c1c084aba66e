//! The simulation harness shared by the model tests: a seeded schedule of
//! host I/O, freezes, network faults, crashes, failover and failback over one
//! replication group, checked against an independent reference model.

#![allow(dead_code)]

pub mod reference;
pub mod rng;
pub mod store;
pub mod world;

#[allow(unused_imports)] // not every test binary uses the schedule runner
pub use world::{Config, RunStats, World};

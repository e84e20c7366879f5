//! Operational plumbing of `palisade run`: metrics, the health and metrics endpoint, leader
//! election and logging. None of it knows about sandboxes or policies; the reconcilers use it.

pub mod health;
pub mod leader;
pub mod metrics;
pub mod telemetry;

//! Palisade: one declarative agent policy, compiled exactly (or stricter) into Kubernetes
//! primitives. `api` holds the custom resources, `policy` the pure policy model and network
//! compilers, `render` the compilation of a sandbox into the objects that run it, `mxc` the
//! import of MXC documents, and `cli` the command line.

pub mod api;
pub mod cli;
pub mod gateway;
pub mod mxc;
pub mod ops;
pub mod policy;
pub mod reconcile;
pub mod render;

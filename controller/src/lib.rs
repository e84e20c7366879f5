//! Palisade: one declarative agent policy, compiled exactly (or stricter) into Kubernetes
//! primitives. `api` holds the custom resources, `policy` the pure policy model and network
//! compilers, `render` the compilation of a sandbox into the objects that run it.

pub mod api;
pub mod policy;

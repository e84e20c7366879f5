//! `palisade gateway`: the egress proxy that enforces domain-name egress on any network
//! plugin. Sandboxes reach only the gateway; each request is attributed to one live sandbox
//! pod (source address and credential must agree), decided with the sandbox's compiled policy,
//! resolved by the gateway itself, checked against the address floor and dialled at exactly
//! the address checked.
//!
//! The pure parts (hosts, addresses, rules, credentials, the ClientHello) are separate from the
//! proxy's I/O.

pub mod addr;
pub mod audit;
pub mod credential;
pub mod denials;
pub mod directory;
pub mod host;
#[cfg(feature = "gateway")]
pub mod proxy;
#[cfg(feature = "gateway")]
pub mod resolve;
pub mod rules;
#[cfg(feature = "gateway")]
pub mod testing;
#[cfg(feature = "gateway")]
pub mod tls;

//! Helpers shared by the integration tests. Include with `mod support;` at the top of a test
//! file. Every test binary compiles this module on its own and uses only part of it, so unused
//! items are expected here and must not trip `-D warnings`.
#![allow(dead_code)]

pub mod apimock;
pub mod context;
pub mod fakeapi;
pub mod pss;

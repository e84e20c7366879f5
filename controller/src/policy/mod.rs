//! The policy model: validation, MXC legacy translation, and the network compilers. Pure
//! functions only; `render` turns their output into Kubernetes objects.

pub mod egress;
pub mod hosts;
pub mod image;
pub mod ingress;
pub mod legacy;
pub mod net;
pub mod paths;
pub mod peers;
pub mod pod_keys;
pub mod quantity;
pub mod services;
pub mod validate;

use std::fmt;

/// A field of a policy or sandbox that is invalid, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyError {
    /// Path of the field below `spec` (`network.egress.allow[0].to[1].cidr`).
    pub field: String,
    pub message: String,
}

impl PolicyError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spec.{}: {}", self.field, self.message)
    }
}

impl std::error::Error for PolicyError {}

/// Several invalid fields at once, so a person can fix them in one go.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Invalid(pub Vec<PolicyError>);

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&lines.join("; "))
    }
}

impl std::error::Error for Invalid {}

//! Stable short hashes of compiled objects.

use serde::Serialize;
use sha2::{Digest, Sha256};

/// First 16 hex digits of the SHA-256 of the value's JSON (object keys sorted by serde_json).
pub fn short_hash<T: Serialize>(value: &T) -> String {
    let json = serde_json::to_value(value)
        .map(|v| v.to_string())
        .unwrap_or_default();
    let digest = Sha256::digest(json.as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

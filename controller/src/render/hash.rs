//! Stable short hashes of compiled objects.

use serde::Serialize;
use sha2::{Digest, Sha256};

/// First 16 hex digits of the SHA-256 of the value's JSON. Struct fields serialize in
/// declaration order and maps are BTreeMaps, so equal values hash equally.
pub fn short_hash<T: Serialize>(value: &T) -> String {
    let json = serde_json::to_vec(value).unwrap_or_default();
    let digest = Sha256::digest(&json);
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

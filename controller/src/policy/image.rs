//! Container image references checked against a policy's `images` rules.

/// The repository of an image with its registry made explicit (`nginx` is
/// `docker.io/library/nginx`), without tag or digest.
pub fn repository(image: &str) -> String {
    let without_digest = image.split('@').next().unwrap_or(image);
    // A tag follows the last ':' only if no '/' comes after it (a registry port has one).
    let name = match without_digest.rfind(':') {
        Some(i) if !without_digest[i..].contains('/') => &without_digest[..i],
        _ => without_digest,
    };
    let first = name.split('/').next().unwrap_or(name);
    let has_registry =
        name.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    if has_registry {
        name.to_string()
    } else if name.contains('/') {
        format!("docker.io/{name}")
    } else {
        format!("docker.io/library/{name}")
    }
}

/// Whether the image is pinned by a sha256 digest.
pub fn has_digest(image: &str) -> bool {
    image.split_once("@sha256:").is_some_and(|(_, d)| {
        d.len() == 64
            && d.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    })
}

/// Whether the image comes from one of `allowed` (registries or repository prefixes, matched
/// on whole path segments so `ghcr.io/acme` does not admit `ghcr.io/acme-evil`).
pub fn registry_allowed(image: &str, allowed: &[String]) -> bool {
    let repo = repository(image);
    allowed.iter().any(|prefix| {
        let prefix = prefix.trim_end_matches('/');
        repo == prefix || repo.starts_with(&format!("{prefix}/"))
    })
}

/// Whether the string is shaped like an image reference at all.
pub fn is_reference(image: &str) -> bool {
    !image.is_empty()
        && !image.starts_with(['/', ':', '@', '.', '-'])
        && image
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/:@".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_repositories() {
        assert_eq!(repository("nginx"), "docker.io/library/nginx");
        assert_eq!(repository("nginx:1.27"), "docker.io/library/nginx");
        assert_eq!(repository("acme/agent:v1"), "docker.io/acme/agent");
        assert_eq!(
            repository("ghcr.io/acme/agent@sha256:abc"),
            "ghcr.io/acme/agent"
        );
        assert_eq!(
            repository("localhost:5000/agent:v1"),
            "localhost:5000/agent"
        );
    }

    #[test]
    fn registry_prefixes_match_whole_segments() {
        let allowed = vec!["ghcr.io/acme".to_string()];
        assert!(registry_allowed("ghcr.io/acme/agent:v1", &allowed));
        assert!(!registry_allowed("ghcr.io/acme-evil/agent:v1", &allowed));
        assert!(!registry_allowed("docker.io/acme/agent", &allowed));
        assert!(registry_allowed("nginx", &["docker.io".to_string()]));
    }

    #[test]
    fn digests() {
        let d = "a".repeat(64);
        assert!(has_digest(&format!("ghcr.io/a/b@sha256:{d}")));
        assert!(!has_digest("ghcr.io/a/b:v1") && !has_digest("ghcr.io/a/b@sha256:abc"));
    }
}

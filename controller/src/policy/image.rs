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
        // Docker Hub answers under several names; tools that pin digests (go-containerregistry,
        // used by Sigstore's policy-controller) write `index.docker.io`.
        match name.split_once('/') {
            Some(("index.docker.io" | "registry-1.docker.io", rest)) => format!("docker.io/{rest}"),
            _ => name.to_string(),
        }
    } else if name.contains('/') {
        format!("docker.io/{name}")
    } else {
        format!("docker.io/library/{name}")
    }
}

/// The tag of an image (`v1` of `ghcr.io/acme/agent:v1`), if it names one.
pub fn tag(image: &str) -> Option<&str> {
    let without_digest = image.split('@').next().unwrap_or(image);
    match without_digest.rfind(':') {
        Some(i) if !without_digest[i..].contains('/') => Some(&without_digest[i + 1..]),
        _ => None,
    }
}

/// The digest of an image (`sha256:...`), if it is pinned by one.
pub fn digest(image: &str) -> Option<&str> {
    image.split_once('@').map(|(_, d)| d)
}

/// How the image a pod runs compares with the image the sandbox asked for: admission (policy
/// engines such as Kyverno or Sigstore's policy-controller) may pin a tag to its digest, which
/// is still the image asked for; anything else is another image.
pub fn admitted_as(asked: &str, running: &str) -> Result<(), String> {
    if asked == running {
        return Ok(());
    }
    if repository(asked) != repository(running) {
        return Err(format!(
            "the pod runs {running}, from another repository than {asked}: something rewrote the image (an admission webhook or a registry mirror policy)"
        ));
    }
    let same_tag = match (tag(asked), tag(running)) {
        (Some(a), Some(r)) => a == r,
        // Pinning may replace the tag by the digest.
        (_, None) => true,
        (None, Some(r)) => r == "latest" || digest(asked).is_some(),
    };
    let same_digest = match (digest(asked), digest(running)) {
        (Some(a), Some(r)) => a == r,
        (Some(_), None) => false,
        (None, _) => true,
    };
    if same_tag && same_digest && (digest(running).is_some() || tag(asked) == tag(running)) {
        Ok(())
    } else {
        Err(format!(
            "the pod runs {running}, not the {asked} the sandbox asked for: something rewrote the image"
        ))
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
    fn a_digest_pinned_by_admission_is_the_image_asked_for() {
        let d = format!("sha256:{}", "a".repeat(64));
        let e = format!("sha256:{}", "b".repeat(64));
        for (asked, running) in [
            ("ghcr.io/acme/agent:1", "ghcr.io/acme/agent:1".to_string()),
            ("ghcr.io/acme/agent:1", format!("ghcr.io/acme/agent:1@{d}")),
            ("ghcr.io/acme/agent:1", format!("ghcr.io/acme/agent@{d}")),
            ("agent:1", format!("docker.io/library/agent:1@{d}")),
            ("agent:1", format!("index.docker.io/library/agent:1@{d}")),
            (
                "acme/agent:1",
                format!("registry-1.docker.io/acme/agent@{d}"),
            ),
            (
                "ghcr.io/acme/agent",
                format!("ghcr.io/acme/agent:latest@{d}"),
            ),
            (
                &format!("ghcr.io/acme/agent@{d}"),
                format!("ghcr.io/acme/agent:1@{d}"),
            ),
        ] {
            assert_eq!(admitted_as(asked, &running), Ok(()), "{asked} -> {running}");
        }
        for (asked, running) in [
            ("ghcr.io/acme/agent:1", "ghcr.io/evil/agent:1".to_string()),
            (
                "ghcr.io/acme/agent:1",
                format!("mirror.example.com/acme/agent:1@{d}"),
            ),
            ("ghcr.io/acme/agent:1", "ghcr.io/acme/agent:2".to_string()),
            ("ghcr.io/acme/agent:1", format!("ghcr.io/acme/agent:2@{d}")),
            (
                &format!("ghcr.io/acme/agent@{d}"),
                format!("ghcr.io/acme/agent@{e}"),
            ),
            (
                &format!("ghcr.io/acme/agent@{d}"),
                "ghcr.io/acme/agent:1".to_string(),
            ),
        ] {
            assert!(
                admitted_as(asked, &running).is_err(),
                "{asked} -> {running}"
            );
        }
    }

    #[test]
    fn digests() {
        let d = "a".repeat(64);
        assert!(has_digest(&format!("ghcr.io/a/b@sha256:{d}")));
        assert!(!has_digest("ghcr.io/a/b:v1") && !has_digest("ghcr.io/a/b@sha256:abc"));
    }
}

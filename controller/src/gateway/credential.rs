//! Per-sandbox proxy credentials. The user is the sandbox's UID; the password an HMAC-SHA256
//! of it under a key that the chart mounts into both the operator (which writes the
//! credentialed proxy URL into the pod) and the gateway (which checks it). Neither needs to
//! read Secrets through the API, and the gateway keeps no table of credentials: a credential is
//! valid when its HMAC verifies, and then names exactly one sandbox.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::hmac;

/// Domain separation: a key reused elsewhere cannot yield a valid proxy credential.
const CONTEXT: &[u8] = b"palisade.dev/gateway-credential/v1\n";

/// Shortest key accepted, in bytes.
pub const MIN_KEY_BYTES: usize = 32;

/// The key in a key file's bytes: a final line ending is not part of it.
pub fn key_bytes(raw: &[u8]) -> &[u8] {
    raw.strip_suffix(b"\n")
        .map_or(raw, |r| r.strip_suffix(b"\r").unwrap_or(r))
}

#[derive(Clone)]
pub struct CredentialKey(hmac::Key);

impl std::fmt::Debug for CredentialKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CredentialKey(..)")
    }
}

impl CredentialKey {
    /// A key from the mounted file's bytes (one final line ending ignored).
    pub fn from_bytes(raw: &[u8]) -> Result<Self, String> {
        let trimmed = key_bytes(raw);
        if trimmed.len() < MIN_KEY_BYTES {
            return Err(format!(
                "the gateway credential key has {} bytes; at least {MIN_KEY_BYTES} are needed",
                trimmed.len()
            ));
        }
        Ok(CredentialKey(hmac::Key::new(hmac::HMAC_SHA256, trimmed)))
    }

    fn message(uid: &str) -> Vec<u8> {
        [CONTEXT, uid.as_bytes()].concat()
    }

    /// The password of the sandbox with this UID.
    pub fn password(&self, uid: &str) -> String {
        URL_SAFE_NO_PAD.encode(hmac::sign(&self.0, &Self::message(uid)).as_ref())
    }

    /// The proxy URL a sandbox's pod uses: `http://UID:PASSWORD@HOST:PORT`.
    pub fn proxy_url(&self, uid: &str, gateway: &str) -> String {
        format!("http://{uid}:{}@{gateway}", self.password(uid))
    }

    /// The sandbox UID a `Proxy-Authorization` header proves, if it does.
    pub fn verify(&self, header: Option<&[u8]>) -> Option<String> {
        let value = std::str::from_utf8(header?).ok()?.trim();
        let (scheme, token) = value.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let decoded = STANDARD.decode(token.trim()).ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let (user, password) = decoded.split_once(':')?;
        if user.is_empty() || user.len() > 64 {
            return None;
        }
        let tag = URL_SAFE_NO_PAD.decode(password).ok()?;
        hmac::verify(&self.0, &Self::message(user), &tag).ok()?;
        Some(user.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> CredentialKey {
        CredentialKey::from_bytes(&[b; 32]).unwrap()
    }

    fn basic(user: &str, password: &str) -> Vec<u8> {
        format!("Basic {}", STANDARD.encode(format!("{user}:{password}"))).into_bytes()
    }

    #[test]
    fn a_credential_names_its_sandbox_and_no_other() {
        let k = key(7);
        let uid = "0b0f6a2e-2f4c-4f0e-9d55-6a8c1a1b2c3d";
        let pw = k.password(uid);
        assert_eq!(k.verify(Some(&basic(uid, &pw))), Some(uid.to_string()));
        assert_eq!(
            k.verify(Some(
                format!("basic  {}", STANDARD.encode(format!("{uid}:{pw}"))).as_bytes()
            )),
            Some(uid.to_string())
        );
        // Another sandbox's UID with this password, a password under another key, a
        // truncated one, no header, another scheme, garbage.
        assert_eq!(k.verify(Some(&basic("other-uid", &pw))), None);
        assert_eq!(k.verify(Some(&basic(uid, &key(8).password(uid)))), None);
        assert_eq!(k.verify(Some(&basic(uid, &pw[..20]))), None);
        assert_eq!(k.verify(None), None);
        assert_eq!(k.verify(Some(format!("Bearer {pw}").as_bytes())), None);
        assert_eq!(k.verify(Some(b"Basic !!!")), None);
        assert_eq!(k.verify(Some(&basic("", &pw))), None);
    }

    #[test]
    fn short_keys_are_refused() {
        assert!(CredentialKey::from_bytes(&[1; 31]).is_err());
        assert!(CredentialKey::from_bytes(&[b'k'; 32]).is_ok());
        assert!(CredentialKey::from_bytes(b"0123456789012345678901234567890\n").is_err());
        // A final line ending is not part of the key.
        let with_newline =
            CredentialKey::from_bytes(b"01234567890123456789012345678901\r\n").unwrap();
        let without = CredentialKey::from_bytes(b"01234567890123456789012345678901").unwrap();
        assert_eq!(with_newline.password("u"), without.password("u"));
    }

    #[test]
    fn the_proxy_url_carries_the_credential() {
        let k = key(1);
        let url = k.proxy_url("u1", "palisade-gateway.palisade-system.svc:3128");
        assert_eq!(
            url,
            format!(
                "http://u1:{}@palisade-gateway.palisade-system.svc:3128",
                k.password("u1")
            )
        );
        assert!(!k.password("u1").contains([':', '@', '/']));
    }
}

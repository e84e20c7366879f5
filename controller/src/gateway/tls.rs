//! The first bytes of a tunnel: a TLS ClientHello, read whole (it may span records) and
//! judged before anything is sent upstream. The server name it asks for must be the CONNECT
//! target; a ClientHello without one, with several, or offering Encrypted Client Hello (which
//! hides the real name in an encrypted inner hello) is refused.

use tls_parser::{
    SNIType, TlsExtension, TlsExtensionType, TlsMessage, TlsMessageHandshake,
    parse_tls_client_hello_extensions, parse_tls_message_handshake,
};

use super::rules::Denial;

/// Largest ClientHello accepted (post-quantum key shares make them a few KiB).
pub const MAX_HELLO: usize = 64 * 1024;

const RECORD_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
/// `encrypted_client_hello` (draft-ietf-tls-esni: 0xfe0d, and the draft codepoints 0xfe08 to
/// 0xfe0c) and the older `encrypted_server_name` (0xffce).
const ECH_TYPES: [u16; 7] = [0xfe0d, 0xfe08, 0xfe09, 0xfe0a, 0xfe0b, 0xfe0c, 0xffce];
/// A ClientHello split over more records than this is refused: real clients use one or two, and
/// every extra record costs a pass over the bytes read so far.
pub const MAX_RECORDS: usize = 16;

/// What the bytes read so far say.
#[derive(Debug, PartialEq, Eq)]
pub enum Hello {
    /// Not enough bytes yet.
    NeedMore,
    /// A complete ClientHello for this server name (as sent), `consumed` bytes long (whole
    /// records).
    Server { name: String, consumed: usize },
    /// Refused.
    Refused(Denial),
}

/// Judges the tunnel's first bytes.
pub fn client_hello(buf: &[u8]) -> Hello {
    let mut handshake: Vec<u8> = Vec::new();
    let mut at = 0;
    let mut records = 0;
    loop {
        records += 1;
        if records > MAX_RECORDS {
            return Hello::Refused(Denial::NotTls);
        }
        // Record header: type, version (3.x), length.
        let Some(header) = buf.get(at..at + 5) else {
            return more_or_refused(buf.len());
        };
        let len = u16::from_be_bytes([header[3], header[4]]) as usize;
        if header[0] != RECORD_HANDSHAKE || header[1] != 3 || len == 0 || len > 16384 + 256 {
            return Hello::Refused(Denial::NotTls);
        }
        let Some(body) = buf.get(at + 5..at + 5 + len) else {
            return more_or_refused(buf.len());
        };
        handshake.extend_from_slice(body);
        at += 5 + len;
        if handshake[0] != HANDSHAKE_CLIENT_HELLO {
            return Hello::Refused(Denial::NotTls);
        }
        if handshake.len() < 4 {
            continue;
        }
        let want = 4 + u32::from_be_bytes([0, handshake[1], handshake[2], handshake[3]]) as usize;
        if want > MAX_HELLO {
            return Hello::Refused(Denial::NotTls);
        }
        if handshake.len() < want {
            continue;
        }
        if handshake.len() > want {
            // Another handshake message after the ClientHello in the same flight.
            return Hello::Refused(Denial::NotTls);
        }
        return match server_name(&handshake) {
            Ok(name) => Hello::Server { name, consumed: at },
            Err(denial) => Hello::Refused(denial),
        };
    }
}

/// Whether the extension list offers Encrypted Client Hello, judged on the raw type codes
/// (before any typed parsing, which a malformed ECH body could make fail first).
fn offers_ech(mut raw: &[u8]) -> bool {
    while raw.len() >= 4 {
        let kind = u16::from_be_bytes([raw[0], raw[1]]);
        if ECH_TYPES.contains(&kind) {
            return true;
        }
        let len = u16::from_be_bytes([raw[2], raw[3]]) as usize;
        raw = raw.get(4 + len..).unwrap_or_default();
    }
    false
}

fn more_or_refused(read: usize) -> Hello {
    if read >= MAX_HELLO + 5 * 8 {
        Hello::Refused(Denial::NotTls)
    } else {
        Hello::NeedMore
    }
}

fn server_name(handshake: &[u8]) -> Result<String, Denial> {
    let Ok((rest, TlsMessage::Handshake(TlsMessageHandshake::ClientHello(hello)))) =
        parse_tls_message_handshake(handshake)
    else {
        return Err(Denial::NotTls);
    };
    if !rest.is_empty() {
        return Err(Denial::NotTls);
    }
    let raw = hello.ext.unwrap_or_default();
    if offers_ech(raw) {
        return Err(Denial::EchOffered);
    }
    let Ok((rest, extensions)) = parse_tls_client_hello_extensions(raw) else {
        return Err(Denial::NotTls);
    };
    if !rest.is_empty() {
        return Err(Denial::NotTls);
    }
    let mut names = Vec::new();
    for ext in &extensions {
        if ECH_TYPES.contains(&TlsExtensionType::from(ext).0) {
            return Err(Denial::EchOffered);
        }
        if let TlsExtension::SNI(list) = ext {
            for (kind, name) in list {
                if *kind != SNIType::HostName {
                    return Err(Denial::SniMismatch);
                }
                names.push(*name);
            }
        }
    }
    match names.as_slice() {
        [] => Err(Denial::SniMissing),
        [one] => std::str::from_utf8(one)
            .map(|n| n.to_string())
            .map_err(|_| Denial::SniMismatch),
        _ => Err(Denial::SniMismatch),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal TLS 1.2-style ClientHello with the given extensions (type, body).
    pub(crate) fn hello(extensions: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut ext = Vec::new();
        for (t, body) in extensions {
            ext.extend_from_slice(&t.to_be_bytes());
            ext.extend_from_slice(&(body.len() as u16).to_be_bytes());
            ext.extend_from_slice(body);
        }
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]); // random
        body.push(0); // session id
        body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one cipher suite
        body.extend_from_slice(&[1, 0]); // null compression
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut hs = vec![HANDSHAKE_CLIENT_HELLO];
        hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend_from_slice(&body);
        hs
    }

    pub(crate) fn sni(name: &str) -> (u16, Vec<u8>) {
        let mut entry = vec![0];
        entry.extend_from_slice(&(name.len() as u16).to_be_bytes());
        entry.extend_from_slice(name.as_bytes());
        let mut body = (entry.len() as u16).to_be_bytes().to_vec();
        body.extend_from_slice(&entry);
        (0, body)
    }

    /// Wraps handshake bytes in records of at most `chunk` bytes each.
    pub(crate) fn records(hs: &[u8], chunk: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for part in hs.chunks(chunk) {
            out.extend_from_slice(&[RECORD_HANDSHAKE, 3, 1]);
            out.extend_from_slice(&(part.len() as u16).to_be_bytes());
            out.extend_from_slice(part);
        }
        out
    }

    #[test]
    fn the_server_name_is_read_from_one_or_several_records() {
        let hs = hello(&[sni("api.example.com")]);
        for chunk in [hs.len(), hs.len() / MAX_RECORDS + 1] {
            let bytes = records(&hs, chunk);
            assert_eq!(
                client_hello(&bytes),
                Hello::Server {
                    name: "api.example.com".into(),
                    consumed: bytes.len()
                },
                "records of {chunk}"
            );
            for cut in [0, 3, 5, bytes.len() - 1] {
                assert_eq!(client_hello(&bytes[..cut]), Hello::NeedMore, "cut at {cut}");
            }
        }
    }

    #[test]
    fn missing_several_or_hidden_names_are_refused() {
        let refused = |exts: &[(u16, Vec<u8>)]| client_hello(&records(&hello(exts), 4000));
        assert_eq!(refused(&[]), Hello::Refused(Denial::SniMissing));
        assert_eq!(
            refused(&[sni("a.example.com"), sni("b.example.com")]),
            Hello::Refused(Denial::SniMismatch)
        );
        assert_eq!(
            refused(&[sni("api.example.com"), (0xfe0d, vec![0, 1, 2, 3])]),
            Hello::Refused(Denial::EchOffered)
        );
        assert_eq!(
            refused(&[(0xffce, vec![0]), sni("api.example.com")]),
            Hello::Refused(Denial::EchOffered)
        );
    }

    #[test]
    fn a_hello_in_many_tiny_records_is_refused() {
        let hs = hello(&[sni("api.example.com")]);
        assert_eq!(
            client_hello(&records(&hs, 1)),
            Hello::Refused(Denial::NotTls)
        );
        // Draft ECH codepoints count as ECH too.
        assert_eq!(
            client_hello(&records(
                &hello(&[sni("a.example.com"), (0xfe0a, vec![1])]),
                4000
            )),
            Hello::Refused(Denial::EchOffered)
        );
    }

    #[test]
    fn other_bytes_are_not_tls() {
        for bytes in [
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
            b"SSH-2.0-OpenSSH_9.6\r\n".to_vec(),
            vec![22, 3, 1, 0, 0],
            vec![23, 3, 3, 0, 5, 1, 2, 3, 4, 5],
            records(&[2, 0, 0, 1, 0], 100),
        ] {
            assert_eq!(
                client_hello(&bytes),
                Hello::Refused(Denial::NotTls),
                "{bytes:?}"
            );
        }
        // A ClientHello followed by another handshake message in the same records.
        let mut hs = hello(&[sni("a.example.com")]);
        hs.extend_from_slice(&[20, 0, 0, 0]);
        assert_eq!(
            client_hello(&records(&hs, 4000)),
            Hello::Refused(Denial::NotTls)
        );
    }
}

//! PEM blocks and base64, without another dependency.
//!
//! PEM (RFC 7468) is base64 of DER between `-----BEGIN <label>-----` and
//! `-----END <label>-----` lines. [`parse`] reads every block of a file (text outside blocks is
//! ignored, as OpenSSL does); [`encode`] writes one block with 64-character lines. The
//! bootstrap tokens use the URL-safe alphabet without padding ([`base64url_encode`]).
//!
//! # Examples
//! ```
//! use mesh_ca::pem;
//! let text = pem::encode("CERTIFICATE", b"\x30\x03\x02\x01\x01");
//! let blocks = pem::parse(&text)?;
//! assert_eq!(blocks[0].label, "CERTIFICATE");
//! assert_eq!(blocks[0].der, b"\x30\x03\x02\x01\x01");
//! # Ok::<_, pem::PemError>(())
//! ```

use std::fmt;

use base64::{
    Engine as _,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};

/// One PEM block: its label and the DER it carries.
#[derive(Clone, PartialEq, Eq)]
pub struct Block {
    /// The label after `BEGIN` (`CERTIFICATE`, `PRIVATE KEY`, `CERTIFICATE REQUEST`).
    pub label: String,
    /// The decoded bytes.
    pub der: Vec<u8>,
}

impl fmt::Debug for Block {
    /// Prints the label and size only: a block may hold a private key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Block")
            .field("label", &self.label)
            .field("len", &self.der.len())
            .finish()
    }
}

/// The text is not well-formed PEM.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct PemError {
    reason: &'static str,
}

impl PemError {
    fn new(reason: &'static str) -> Self {
        Self { reason }
    }
}

const BEGIN: &str = "-----BEGIN ";
const END: &str = "-----END ";
const DASHES: &str = "-----";

/// Reads every PEM block in `text`, in order. Text between blocks is ignored.
///
/// # Errors
/// [`PemError`] for a `BEGIN` line without its `END`, mismatched labels or bad base64.
pub fn parse(text: &str) -> Result<Vec<Block>, PemError> {
    let mut blocks = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let line = line.trim();
        let Some(label) = line
            .strip_prefix(BEGIN)
            .and_then(|rest| rest.strip_suffix(DASHES))
        else {
            continue;
        };
        let mut body = String::new();
        let mut ended = false;
        for inner in lines.by_ref() {
            let inner = inner.trim();
            if let Some(end_label) = inner
                .strip_prefix(END)
                .and_then(|rest| rest.strip_suffix(DASHES))
            {
                if end_label != label {
                    return Err(PemError::new("END label does not match BEGIN label"));
                }
                ended = true;
                break;
            }
            if inner.starts_with(BEGIN) {
                return Err(PemError::new("BEGIN line inside a block"));
            }
            if inner.contains(':') {
                // RFC 1421 headers (Proc-Type, DEK-Info): an encrypted key.
                return Err(PemError::new(
                    "encrypted PEM (Proc-Type/DEK-Info headers) is not supported",
                ));
            }
            body.push_str(inner);
        }
        if !ended {
            return Err(PemError::new("BEGIN line without a matching END line"));
        }
        let der = STANDARD
            .decode(&body)
            .map_err(|_| PemError::new("the block is not valid base64"))?;
        blocks.push(Block {
            label: label.to_owned(),
            der,
        });
    }
    Ok(blocks)
}

/// Writes one PEM block with 64-character lines and a trailing newline.
pub fn encode(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 2 * label.len() + 40);
    out.push_str(BEGIN);
    out.push_str(label);
    out.push_str(DASHES);
    out.push('\n');
    for chunk in b64.as_bytes().chunks(64) {
        // The alphabet is ASCII, so every chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(END);
    out.push_str(label);
    out.push_str(DASHES);
    out.push('\n');
    out
}

/// Encodes `data` as URL-safe base64 without padding (RFC 4648 §5).
pub fn base64url_encode(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

/// Decodes URL-safe base64 without padding; `None` if it is not exactly that (padding,
/// the standard alphabet and non-canonical trailing bits are refused).
pub fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, b64) in cases {
            assert_eq!(STANDARD.encode(plain.as_bytes()), b64);
            assert_eq!(STANDARD.decode(b64).ok().as_deref(), Some(plain.as_bytes()));
            let url = b64.trim_end_matches('=');
            assert_eq!(base64url_encode(plain.as_bytes()), url);
            assert_eq!(base64url_decode(url).as_deref(), Some(plain.as_bytes()));
        }
    }

    #[test]
    fn base64url_uses_its_alphabet() {
        let data = [0xfb, 0xff, 0xbf];
        assert_eq!(base64url_encode(&data), "-_-_");
        assert_eq!(STANDARD.encode(data), "+/+/");
        assert_eq!(base64url_decode("-_-_").as_deref(), Some(&data[..]));
        assert_eq!(base64url_decode("+/+/"), None);
        assert_eq!(base64url_decode("Zg=="), None);
        assert_eq!(base64url_decode("Z"), None);
        // Non-canonical: trailing bits set.
        assert_eq!(base64url_decode("Zh"), None);
    }

    #[test]
    fn round_trips_every_length() {
        for len in 0..100u8 {
            let data: Vec<u8> = (0..len).map(|i| i.wrapping_mul(37) ^ 0x5a).collect();
            let text = encode("TEST", &data);
            let blocks = parse(&text).unwrap();
            assert_eq!(blocks.len(), 1);
            assert_eq!(blocks[0].der, data);
            assert!(text.lines().all(|l| l.len() <= 64), "{text}");
        }
    }

    #[test]
    fn parses_several_blocks_and_ignores_text_between() {
        let text = format!(
            "subject=CN = x\n{}\nsome text\n{}",
            encode("CERTIFICATE", b"one"),
            encode("PRIVATE KEY", b"two")
        );
        let blocks = parse(&text).unwrap();
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[0].label, "CERTIFICATE");
        assert_eq!(blocks[1].label, "PRIVATE KEY");
        assert_eq!(blocks[1].der, b"two");
        assert!(!format!("{:?}", blocks[1]).contains("two"));
        assert!(parse("no pem here").unwrap().is_empty());
    }

    #[test]
    fn rejects_broken_pem() {
        let good = encode("CERTIFICATE", b"abc");
        let cases = [
            good.replace("-----END CERTIFICATE-----\n", ""),
            good.replace("END CERTIFICATE", "END X"),
            good.replace("YWJj", "YW!j"),
            "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES\n\nYWJj\n-----END RSA PRIVATE KEY-----\n".to_owned(),
        ];
        for text in cases {
            assert!(parse(&text).is_err(), "{text}");
        }
    }
}

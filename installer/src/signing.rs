//! minisign signatures (Ed25519, the format `minisign -S` writes and `minisign -V` checks),
//! so an operator can verify what we sign with Debian's `minisign` as well as with us.
//!
//! - [`SecretKey`] signs (`bundle create --sign`, `signature sign`, `release/build.sh`).
//! - [`Trust`] decides whether a signature is good enough: by a key embedded in this binary
//!   (the release keys: `release/keys.pub`, or the file `ATLAS_RELEASE_PUBKEYS` names at
//!   build time), by a key the operator passed with `--trust-key`, or no signature at all
//!   when `--allow-unsigned` says so. Everything here is offline.
//!
//! Only prehashed signatures (BLAKE2b-512 of the content, what minisign has made by default
//! since 0.8) are accepted: legacy ones sign the raw content and are refused.

use std::fmt;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// What a signature file of `FILE` is called: `FILE.minisig`, as minisign names it.
pub const SIG_SUFFIX: &str = ".minisig";

/// The release public keys this binary was built with (see `installer/build.rs`).
const EMBEDDED_KEYS: &str = include_str!(concat!(env!("OUT_DIR"), "/release-keys.pub"));

#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    #[error(
        "{what} is not signed. Refused: sign it (`bundle create --sign KEY`) and pass --trust-key with the public key, or pass --allow-unsigned to accept it unsigned"
    )]
    Unsigned { what: String },
    #[error(
        "{what} is signed by key ID {id}, which this binary does not trust (embedded release keys: {embedded}). If it is your own key, pass --trust-key with its public key (file or string)"
    )]
    UnknownKey {
        what: String,
        id: KeyId,
        embedded: String,
    },
    #[error(
        "{what} does not match its signature by key ID {id}: it was changed after it was signed. Refused; fetch it again from its source"
    )]
    Mismatch { what: String, id: KeyId },
    #[error("{what}: the signature is not in minisign format: {reason}")]
    Malformed { what: String, reason: String },
    #[error("public key {given:?} is not a minisign public key (file or base64 string): {reason}")]
    BadPublicKey { given: String, reason: String },
    #[error("secret key {path}: {reason}")]
    SecretKey { path: PathBuf, reason: String },
    #[error(
        "secret key {path} is encrypted: give its password in a file (--sign-password-file FILE or ATLAS_SIGN_PASSWORD_FILE), or run on a terminal to be asked"
    )]
    NeedsPassword { path: PathBuf },
}

/// A key's 8-byte ID, shown as minisign shows it (16 hex digits of the little-endian u64).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KeyId([u8; 8]);

impl KeyId {
    fn from_slice(b: &[u8]) -> KeyId {
        let mut id = [0u8; 8];
        id.copy_from_slice(&b[..8]);
        KeyId(id)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016X}", u64::from_le_bytes(self.0))
    }
}

impl Serialize for KeyId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A minisign public key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    pub id: KeyId,
    /// The base64 line of a `.pub` file (what `minisign -P` takes).
    pub base64: String,
}

impl PublicKey {
    /// One key from its base64 line (`RW...`).
    pub fn from_base64(line: &str) -> Result<PublicKey, String> {
        let pk = minisign::PublicKey::from_base64(line.trim()).map_err(|e| e.to_string())?;
        Ok(PublicKey {
            id: KeyId::from_slice(pk.keynum()),
            base64: line.trim().to_owned(),
        })
    }

    /// Every key of a keys file: a minisign `.pub` file, or several of them back to back.
    /// `untrusted comment:` lines, `#` comments and blank lines are skipped.
    pub fn parse_file(text: &str) -> Result<Vec<PublicKey>, String> {
        text.lines()
            .map(str::trim)
            .filter(|l| {
                !l.is_empty() && !l.starts_with('#') && !l.starts_with("untrusted comment:")
            })
            .map(PublicKey::from_base64)
            .collect()
    }

    /// `--trust-key`: a base64 key, or a file holding one or more.
    pub fn from_arg(given: &str) -> Result<Vec<PublicKey>, SignatureError> {
        let bad = |reason: String| SignatureError::BadPublicKey {
            given: given.to_owned(),
            reason,
        };
        if let Ok(k) = PublicKey::from_base64(given) {
            return Ok(vec![k]);
        }
        let text = std::fs::read_to_string(given)
            .map_err(|e| bad(format!("not a base64 key, and not a readable file ({e})")))?;
        let keys = PublicKey::parse_file(&text).map_err(bad)?;
        if keys.is_empty() {
            return Err(bad("the file holds no key".to_owned()));
        }
        Ok(keys)
    }

    fn minisign(&self) -> minisign::PublicKey {
        minisign::PublicKey::from_base64(&self.base64).expect("parsed when the key was made")
    }
}

/// Where a trusted key comes from; said with every accepted signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeySource {
    /// A release key built into this binary.
    Embedded,
    /// Given by the operator with `--trust-key`.
    Trusted,
}

/// Who signed something that was accepted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum Signer {
    Signed {
        key_id: KeyId,
        source: KeySource,
        /// The signed comment (minisign's "trusted comment").
        comment: String,
    },
    /// No signature, accepted because the operator said `--allow-unsigned`.
    Unsigned,
}

impl fmt::Display for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Signer::Signed {
                key_id,
                source: KeySource::Embedded,
                ..
            } => write!(
                f,
                "signed by key ID {key_id} (a release key embedded in this binary)"
            ),
            Signer::Signed {
                key_id,
                source: KeySource::Trusted,
                ..
            } => write!(f, "signed by key ID {key_id} (trusted with --trust-key)"),
            Signer::Unsigned => write!(f, "NOT signed (accepted with --allow-unsigned)"),
        }
    }
}

/// Which signatures are accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trust {
    keys: Vec<(PublicKey, KeySource)>,
    allow_unsigned: bool,
}

impl Trust {
    /// The release keys embedded in this binary; nothing unsigned.
    pub fn embedded() -> Trust {
        let keys = PublicKey::parse_file(EMBEDDED_KEYS)
            .expect("installer/build.rs checked the embedded keys file")
            .into_iter()
            .map(|k| (k, KeySource::Embedded))
            .collect();
        Trust {
            keys,
            allow_unsigned: false,
        }
    }

    /// Also accepts signatures by `keys` (the operator's own).
    pub fn with_trusted(mut self, keys: Vec<PublicKey>) -> Trust {
        for k in keys {
            if !self.keys.iter().any(|(have, _)| have.id == k.id) {
                self.keys.push((k, KeySource::Trusted));
            }
        }
        self
    }

    /// Also accepts content without a signature (never content with a bad one).
    pub fn allowing_unsigned(mut self, allow: bool) -> Trust {
        self.allow_unsigned = allow;
        self
    }

    pub fn embedded_ids(&self) -> Vec<KeyId> {
        self.keys
            .iter()
            .filter(|(_, s)| *s == KeySource::Embedded)
            .map(|(k, _)| k.id)
            .collect()
    }

    /// Checks `signature` (a `.minisig` file's bytes, `None` when there is none) over `data`.
    /// `what` names the content in errors.
    pub fn check(
        &self,
        what: &str,
        data: &[u8],
        signature: Option<&[u8]>,
    ) -> Result<Signer, SignatureError> {
        let Some(sig) = signature else {
            return if self.allow_unsigned {
                Ok(Signer::Unsigned)
            } else {
                Err(SignatureError::Unsigned {
                    what: what.to_owned(),
                })
            };
        };
        let malformed = |reason: String| SignatureError::Malformed {
            what: what.to_owned(),
            reason,
        };
        let text = std::str::from_utf8(sig).map_err(|_| malformed("not UTF-8 text".to_owned()))?;
        let sig =
            minisign::SignatureBox::from_string(text).map_err(|e| malformed(e.to_string()))?;
        if !sig.is_prehashed() {
            return Err(malformed(
                "a legacy (not prehashed) signature; sign it again with a current minisign"
                    .to_owned(),
            ));
        }
        let id = KeyId::from_slice(sig.keynum());
        let Some((key, source)) = self.keys.iter().find(|(k, _)| k.id == id) else {
            let embedded = self.embedded_ids();
            return Err(SignatureError::UnknownKey {
                what: what.to_owned(),
                id,
                embedded: if embedded.is_empty() {
                    "none".to_owned()
                } else {
                    embedded
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            });
        };
        // quiet: the library would print to stderr; no legacy signatures.
        minisign::verify(&key.minisign(), &sig, Cursor::new(data), true, false, false).map_err(
            |_| SignatureError::Mismatch {
                what: what.to_owned(),
                id,
            },
        )?;
        Ok(Signer::Signed {
            key_id: id,
            source: *source,
            comment: sig.trusted_comment().unwrap_or_default(),
        })
    }
}

/// An unencrypted secret key (`minisign -G -W`), or `None` for anything else. Read without
/// the crate's checksum test: Debian's minisign 0.11 writes these keys with an all-zero
/// checksum, which the crate calls corrupted. A damaged key is still caught: `sign` checks
/// every signature it makes against the public key half stored in the secret key.
fn unencrypted(text: &str) -> Option<minisign::SecretKey> {
    use base64::Engine as _;
    let line = text.lines().nth(1)?.trim();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(line)
        .ok()?;
    // Layout: sig_alg (2) kdf_alg (2) ...; kdf_alg 0 means no encryption.
    if bytes.get(2..4)? != [0, 0] {
        return None;
    }
    minisign::SecretKey::from_bytes(&bytes).ok()
}

/// A secret key, decrypted, ready to sign.
pub struct SecretKey {
    sk: minisign::SecretKey,
    pk: minisign::PublicKey,
    pub id: KeyId,
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({})", self.id)
    }
}

impl SecretKey {
    /// Reads a minisign secret key file (`minisign -G` makes one). An encrypted key asks
    /// `password` for its password; an unencrypted one (`minisign -G -W`) does not.
    pub fn load(
        path: &Path,
        password: impl FnOnce() -> Option<String>,
    ) -> Result<SecretKey, SignatureError> {
        let err = |reason: String| SignatureError::SecretKey {
            path: path.to_owned(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let sk = match unencrypted(&text) {
            Some(sk) => sk,
            None => {
                let pw = password().ok_or_else(|| SignatureError::NeedsPassword {
                    path: path.to_owned(),
                })?;
                // Some(password): the library would otherwise prompt (and print) by itself.
                minisign::SecretKeyBox::from_string(&text)
                    .and_then(|b| b.into_secret_key(Some(pw)))
                    .map_err(|e| err(e.to_string()))?
            }
        };
        let pk = minisign::PublicKey::from_secret_key(&sk).map_err(|e| err(e.to_string()))?;
        Ok(SecretKey {
            id: KeyId::from_slice(sk.keynum()),
            sk,
            pk,
        })
    }

    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        PublicKey {
            id: self.id,
            base64: self.pk.to_base64(),
        }
    }

    /// A `.minisig` file's bytes for `data`, with `comment` as its (signed) trusted comment.
    pub fn sign(&self, data: &[u8], comment: &str) -> Result<Vec<u8>, SignatureError> {
        let comment = comment.replace(['\n', '\r'], " ");
        let untrusted = format!("signature from atlas-install secret key {}", self.id);
        // With the public key, sign() verifies what it made before returning it.
        let sig = minisign::sign(
            Some(&self.pk),
            &self.sk,
            Cursor::new(data),
            Some(&comment),
            Some(&untrusted),
        )
        .map_err(|e| SignatureError::SecretKey {
            path: PathBuf::from(format!("key ID {}", self.id)),
            reason: e.to_string(),
        })?;
        Ok(sig.into_string().into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (SecretKey, PublicKey) {
        let kp = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
        let id = KeyId::from_slice(kp.sk.keynum());
        let sk = SecretKey {
            id,
            pk: kp.pk.clone(),
            sk: kp.sk,
        };
        let public = sk.public();
        (sk, public)
    }

    #[test]
    fn embedded_keys_parse() {
        // The committed release/keys.pub holds no key yet; any ATLAS_RELEASE_PUBKEYS must parse.
        let t = Trust::embedded();
        assert_eq!(
            t.embedded_ids().len(),
            PublicKey::parse_file(EMBEDDED_KEYS).unwrap().len()
        );
    }

    #[test]
    fn signatures_by_trusted_keys_pass_and_name_the_key() {
        let (sk, pk) = pair();
        let sig = sk.sign(b"data", "file:x").unwrap();
        let t = Trust::embedded().with_trusted(vec![pk.clone()]);
        let s = t.check("x", b"data", Some(&sig)).unwrap();
        assert_eq!(
            s,
            Signer::Signed {
                key_id: pk.id,
                source: KeySource::Trusted,
                comment: "file:x".to_owned()
            }
        );
        assert!(s.to_string().contains(&pk.id.to_string()), "{s}");
        let e = t.check("x", b"datA", Some(&sig)).unwrap_err();
        assert!(matches!(e, SignatureError::Mismatch { .. }), "{e}");
        let (_, other) = pair();
        let e = Trust::embedded()
            .with_trusted(vec![other])
            .check("x", b"data", Some(&sig))
            .unwrap_err();
        assert!(matches!(e, SignatureError::UnknownKey { .. }), "{e}");
        assert!(e.to_string().contains(&pk.id.to_string()), "{e}");
    }

    #[test]
    fn unsigned_only_when_allowed() {
        let e = Trust::embedded().check("x", b"d", None).unwrap_err();
        assert!(e.to_string().contains("--allow-unsigned"), "{e}");
        let s = Trust::embedded()
            .allowing_unsigned(true)
            .check("x", b"d", None)
            .unwrap();
        assert_eq!(s, Signer::Unsigned);
        let e = Trust::embedded()
            .allowing_unsigned(true)
            .check("x", b"d", Some(b"garbage"))
            .unwrap_err();
        assert!(matches!(e, SignatureError::Malformed { .. }), "{e}");
    }

    #[test]
    fn keys_files_and_strings() {
        let (_, a) = pair();
        let (_, b) = pair();
        let text = format!(
            "# whose keys\nuntrusted comment: minisign public key {}\n{}\n\n{}\n",
            a.id, a.base64, b.base64
        );
        assert_eq!(PublicKey::parse_file(&text).unwrap(), vec![a.clone(), b]);
        assert_eq!(PublicKey::from_arg(&a.base64).unwrap(), vec![a]);
        let e = PublicKey::from_arg("/nonexistent/key.pub").unwrap_err();
        assert!(e.to_string().contains("not a base64 key"), "{e}");
    }
}

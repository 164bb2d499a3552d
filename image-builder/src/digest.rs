//! Content digests (`sha256:<hex>`) and the hashing helpers every blob path goes through.

use std::fmt;
use std::io::{self, Read};
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    #[error("digest {input:?} has no algorithm: write it as sha256:<64 hex characters>")]
    MissingAlgorithm { input: String },
    #[error("digest {input:?} uses algorithm {algorithm:?}; only sha256 is supported")]
    UnsupportedAlgorithm { input: String, algorithm: String },
    #[error(
        "digest {input:?} is malformed: {reason}; expected sha256:<64 lowercase hex characters>"
    )]
    Malformed { input: String, reason: &'static str },
}

/// A sha256 content digest. Only sha256 is accepted: it is what every registry and layout
/// we talk to uses, and accepting others would mean trusting digests we cannot check.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hex: String,
}

impl Digest {
    pub fn parse(input: &str) -> Result<Self, DigestError> {
        let Some((algorithm, hex)) = input.split_once(':') else {
            return Err(DigestError::MissingAlgorithm {
                input: input.to_owned(),
            });
        };
        if algorithm != "sha256" {
            return Err(DigestError::UnsupportedAlgorithm {
                input: input.to_owned(),
                algorithm: algorithm.to_owned(),
            });
        }
        if hex.len() != 64 {
            return Err(DigestError::Malformed {
                input: input.to_owned(),
                reason: "the hex part is not 64 characters long",
            });
        }
        if !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(DigestError::Malformed {
                input: input.to_owned(),
                reason: "the hex part has characters other than 0-9 and a-f",
            });
        }
        Ok(Self {
            hex: hex.to_owned(),
        })
    }

    /// The digest of `bytes`, for small documents (manifests, configs, index.json).
    pub fn of_bytes(bytes: &[u8]) -> Self {
        Self {
            hex: hex::encode(Sha256::digest(bytes)),
        }
    }

    pub fn hex(&self) -> &str {
        &self.hex
    }

    pub fn algorithm(&self) -> &'static str {
        "sha256"
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Running sha256 + byte count.
#[derive(Clone, Default)]
pub struct Hasher {
    sha: Sha256,
    size: u64,
}

impl Hasher {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn update(&mut self, bytes: &[u8]) {
        self.sha.update(bytes);
        self.size += bytes.len() as u64;
    }
    pub fn size(&self) -> u64 {
        self.size
    }
    pub fn finish(self) -> (Digest, u64) {
        (
            Digest {
                hex: hex::encode(self.sha.finalize()),
            },
            self.size,
        )
    }
}

/// Wraps a reader and fails the read that reaches EOF (or exceeds the expected size) when the
/// bytes do not hash to the expected digest, so a consumer can never finish reading a blob
/// whose content differs from what its descriptor promised.
pub struct VerifyingReader<R> {
    inner: R,
    hasher: Option<Hasher>,
    expected: Digest,
    expected_size: u64,
    what: String,
}

impl<R: Read> VerifyingReader<R> {
    /// `what` names the blob in errors (e.g. "layer sha256:... of oci:/dir:tag").
    pub fn new(inner: R, expected: Digest, expected_size: u64, what: String) -> Self {
        Self {
            inner,
            hasher: Some(Hasher::new()),
            expected,
            expected_size,
            what,
        }
    }
}

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(hasher) = self.hasher.as_mut() else {
            return Ok(0);
        };
        let n = self.inner.read(buf)?;
        hasher.update(&buf[..n]);
        if hasher.size() > self.expected_size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} is longer than the {} bytes its descriptor declares",
                    self.what, self.expected_size
                ),
            ));
        }
        if n == 0 {
            let (digest, size) = self
                .hasher
                .take()
                .map(Hasher::finish)
                .unwrap_or_else(|| Hasher::new().finish());
            if size != self.expected_size {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} has {size} bytes, its descriptor declares {}",
                        self.what, self.expected_size
                    ),
                ));
            }
            if digest != self.expected {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} has digest {digest}, expected {}: the blob is corrupt",
                        self.what, self.expected
                    ),
                ));
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_and_prints() {
        let d = Digest::parse(EMPTY).unwrap();
        assert_eq!(d.to_string(), EMPTY);
        assert_eq!(Digest::of_bytes(b""), d);
    }

    #[test]
    fn rejects_bad_digests() {
        assert!(matches!(
            Digest::parse("abc"),
            Err(DigestError::MissingAlgorithm { .. })
        ));
        assert!(matches!(
            Digest::parse("sha512:00"),
            Err(DigestError::UnsupportedAlgorithm { .. })
        ));
        assert!(matches!(
            Digest::parse("sha256:00"),
            Err(DigestError::Malformed { .. })
        ));
        let upper = EMPTY.to_uppercase().replace("SHA256", "sha256");
        assert!(matches!(
            Digest::parse(&upper),
            Err(DigestError::Malformed { .. })
        ));
    }

    #[test]
    fn verifying_reader_refuses_wrong_content() {
        let d = Digest::of_bytes(b"hello");
        let mut ok = VerifyingReader::new(&b"hello"[..], d.clone(), 5, "blob".into());
        io::copy(&mut ok, &mut io::sink()).unwrap();
        let mut bad = VerifyingReader::new(&b"hellO"[..], d.clone(), 5, "blob".into());
        let err = io::copy(&mut bad, &mut io::sink()).unwrap_err();
        assert!(err.to_string().contains("corrupt"), "{err}");
        let mut long = VerifyingReader::new(&b"hello!"[..], d, 5, "blob".into());
        let err = io::copy(&mut long, &mut io::sink()).unwrap_err();
        assert!(err.to_string().contains("longer"), "{err}");
    }
}

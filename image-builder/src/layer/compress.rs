//! Layer compression: declared by media type, confirmed by magic bytes.

use std::io::{self, BufReader, Read};

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];

impl Compression {
    /// What an OCI or Docker layer media type declares; `None` when the type says nothing
    /// (unknown or foreign types are sniffed instead).
    pub fn from_media_type(media_type: &str) -> Option<Compression> {
        let base = media_type.split(';').next().unwrap_or("").trim();
        if base.ends_with("+gzip") || base.ends_with(".tar.gzip") || base.ends_with(".gzip") {
            Some(Compression::Gzip)
        } else if base.ends_with("+zstd") || base.ends_with(".zstd") {
            Some(Compression::Zstd)
        } else if base.ends_with(".tar") || base.ends_with("layer.v1.tar") {
            Some(Compression::None)
        } else {
            None
        }
    }

    /// What the first bytes of a blob say.
    pub fn sniff(head: &[u8]) -> Compression {
        if head.starts_with(GZIP_MAGIC) {
            Compression::Gzip
        } else if head.starts_with(ZSTD_MAGIC) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "uncompressed tar",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }
}

/// Resolves the compression of `blob` and returns a reader of the uncompressed tar.
///
/// Magic bytes win over the media type, because Docker schema 2 labels every layer `tar.gzip`
/// even when a tool pushed it uncompressed. The one disagreement we refuse is a declared
/// compression whose magic is absent: that blob is corrupt, and reading it as a plain tar would
/// produce a misleading error far from the cause.
pub fn decompress<'a, R: Read + Send + 'a>(
    mut blob: R,
    media_type: Option<&str>,
) -> Result<(Compression, Box<dyn Read + Send + 'a>), String> {
    // Short reads must not hide the magic, so collect up to 4 bytes and put them back in front.
    let mut head = Vec::with_capacity(4);
    (&mut blob)
        .take(4)
        .read_to_end(&mut head)
        .map_err(|e| format!("cannot read the blob: {e}"))?;
    let sniffed = Compression::sniff(&head);
    let declared = media_type.and_then(Compression::from_media_type);
    if let Some(declared) = declared
        && declared != Compression::None
        && sniffed == Compression::None
    {
        return Err(format!(
            "media type {:?} declares {} but the blob does not start with its magic bytes; \
             the blob is corrupt",
            media_type.unwrap_or_default(),
            declared.name()
        ));
    }
    let buffered = BufReader::with_capacity(256 * 1024, io::Cursor::new(head).chain(blob));
    let reader: Box<dyn Read + Send + 'a> = match sniffed {
        Compression::None => Box::new(buffered),
        // Multi-member gzip is valid (pigz, concatenated appends) and must be read to the end.
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buffered)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(buffered)
                .map_err(|e| format!("cannot start the zstd decoder: {e}"))?,
        ),
    };
    Ok((sniffed, reader))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types() {
        use Compression::*;
        let cases = [
            ("application/vnd.oci.image.layer.v1.tar+gzip", Some(Gzip)),
            ("application/vnd.oci.image.layer.v1.tar+zstd", Some(Zstd)),
            ("application/vnd.oci.image.layer.v1.tar", Some(None)),
            (
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
                Some(Gzip),
            ),
            (
                "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                Some(Gzip),
            ),
            ("application/octet-stream", Option::None),
        ];
        for (mt, want) in cases {
            assert_eq!(Compression::from_media_type(mt), want, "{mt}");
        }
    }

    #[test]
    fn declared_gzip_without_magic_is_refused() {
        let err = match decompress(
            &b"not gzip at all"[..],
            Some("application/vnd.oci.image.layer.v1.tar+gzip"),
        ) {
            Err(e) => e,
            Ok(_) => panic!("accepted"),
        };
        assert!(err.contains("declares gzip"), "{err}");
    }
}

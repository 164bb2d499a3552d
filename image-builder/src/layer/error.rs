//! The one error type of the layer module. Every variant that concerns layer content names the
//! layer digest and the entry, so an operator can tell which blob (and which file in it) to
//! blame without re-running anything.

use std::io;

/// Why flattening or indexing a layer failed.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("layer {digest}: cannot open the blob: {source}")]
    Open {
        digest: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "layer {digest}: entry {entry}: reading the {compression} stream failed: {source} \
         (the blob is corrupt or truncated: delete it from the blob cache and pull it again)"
    )]
    Read {
        digest: String,
        entry: String,
        compression: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(
        "layer {digest}: entry {entry}: the tar stream ends early ({detail}); \
         the blob is truncated or its header sizes lie"
    )]
    Truncated {
        digest: String,
        entry: String,
        detail: String,
    },
    #[error("layer {digest}: entry {entry}: malformed tar: {detail}")]
    Malformed {
        digest: String,
        entry: String,
        detail: String,
    },
    #[error(
        "layer {digest}: entry {entry}: {what} of {size} bytes exceeds the limit of {limit} bytes"
    )]
    TooLarge {
        digest: String,
        entry: String,
        what: &'static str,
        size: u64,
        limit: u64,
    },
    #[error(
        "layer {digest}: entry {entry}: path is unsafe ({detail}); refusing a layer that could write \
         outside the image root"
    )]
    UnsafePath {
        digest: String,
        entry: String,
        detail: String,
    },
    #[error("layer {digest}: entry {entry}: hard link to {target:?} refused: {detail}")]
    BadHardlink {
        digest: String,
        entry: String,
        target: String,
        detail: String,
    },
    #[error(
        "layer {digest}: entry {entry}: parent {parent:?} is a symlink in the merged tree; \
         extracting would write through it, so the image is refused"
    )]
    ThroughSymlink {
        digest: String,
        entry: String,
        parent: String,
    },
    #[error(
        "layer {digest}: entry {entry}: parent {parent:?} is not a directory in the merged tree"
    )]
    ParentNotDir {
        digest: String,
        entry: String,
        parent: String,
    },
    #[error("layer {digest}: entry {entry}: unsupported entry ({detail})")]
    Unsupported {
        digest: String,
        entry: String,
        detail: String,
    },
    #[error(
        "layer {digest}: entry {entry}: the blob differs from its index ({detail}); \
         the cached index or blob is stale: delete both and pull again"
    )]
    IndexMismatch {
        digest: String,
        entry: String,
        detail: String,
    },
    #[error("layer {digest}: {detail}")]
    Compression { digest: String, detail: String },
    #[error(
        "cached index for layer {digest} is unreadable ({detail}); delete it and index the blob again"
    )]
    CorruptIndex { digest: String, detail: String },
    #[error(
        "{count} layers were given but {indexes} indexes; index every layer once, bottom to top"
    )]
    IndexCount { count: usize, indexes: usize },
    #[error("writing the flattened tar stream failed: {0}")]
    Output(#[source] io::Error),
    #[error("invalid layer builder input {path:?}: {detail}")]
    Builder { path: String, detail: String },
    #[error("/{path} in the image: {detail}")]
    Select { path: String, detail: String },
}

/// Printable form of a tar path (paths are bytes; error messages are text).
pub(crate) fn show(path: &[u8]) -> String {
    if path.is_empty() {
        "\"/\" (root)".to_string()
    } else {
        format!("{:?}", String::from_utf8_lossy(path))
    }
}

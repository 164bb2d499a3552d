//! Pulling from an OCI layout or archive: resolve the tag and platform, then read every blob
//! once through a verifier (feeding the layer observer), so a corrupt layout fails here and
//! not halfway through a conversion.

use std::io;

use super::{Layer, PullError, PullOptions, PulledImage, Source, assemble, select_platform};
use crate::manifest::{Manifest, OCI_MANIFEST};
use crate::oci_layout::OciLayout;
use crate::progress::Progress;

pub(super) fn pull_layout(
    source: &Source,
    layout: &OciLayout,
    tag: Option<&str>,
    opts: &PullOptions,
    progress: &dyn Progress,
) -> Result<PulledImage, PullError> {
    let source_name = source.to_string();
    let store = layout.store();
    let mut desc = layout.resolve(tag)?.clone();
    let mut index_digest = None;
    let (manifest, bytes) = loop {
        let what = format!("manifest {} of {source_name}", desc.digest);
        let bytes = store.read_verified(&desc.digest, desc.size, "manifest")?;
        match Manifest::parse(&bytes, Some(&desc.media_type), &what)? {
            Manifest::Image(m) => break (*m, bytes),
            Manifest::Index(index) => {
                if index_digest.is_some() {
                    return Err(PullError::NestedIndex {
                        source_name,
                        wanted: opts.platform.to_string(),
                    });
                }
                index_digest = Some(desc.digest.clone());
                desc = select_platform(&index, &opts.platform, &source_name)?.clone();
            }
        }
    };
    let config_bytes =
        store.read_verified(&manifest.config.digest, manifest.config.size, "config")?;
    for (i, d) in manifest.layers.iter().enumerate() {
        let layer = Layer::from_descriptor(d);
        let task = progress.task(
            &format!("verify {}", short(&d.digest.to_string())),
            Some(d.size),
        );
        let mut reader = store.open_verified(&d.digest, d.size, "layer")?;
        let mut sink: Box<dyn io::Write + Send> = match &opts.observer {
            Some(o) => o.layer(i, &layer).unwrap_or_else(|| Box::new(io::sink())),
            None => Box::new(io::sink()),
        };
        let copied = io::copy(&mut reader, &mut sink);
        match copied {
            Ok(_) => task.finish("verified"),
            Err(source) => {
                task.fail("corrupt");
                return Err(PullError::LayerRead {
                    source_name,
                    digest: d.digest.clone(),
                    source,
                });
            }
        }
    }
    let media_type = manifest.media_type.clone().unwrap_or_else(|| {
        if desc.media_type.is_empty() {
            OCI_MANIFEST.to_owned()
        } else {
            desc.media_type.clone()
        }
    });
    assemble(
        source_name,
        None,
        desc.digest.clone(),
        index_digest,
        media_type,
        bytes,
        manifest,
        config_bytes,
        store.clone(),
        false,
    )
}

pub(crate) fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    &hex[..hex.len().min(12)]
}

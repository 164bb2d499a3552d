//! The Incus unified tarball: `metadata.yaml`, then the flattened image under `rootfs/`,
//! streamed in one pass over the blobs into any `Write` (a file, stdout, the body of
//! `POST /1.0/images`). Nothing is staged on disk.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use super::{AtlasImage, BuildError, layer_input};
use crate::layer::{
    FlattenOptions, FlattenStats, Indexer, Layer, LayerError, LayerIndex, Plan, index_layers,
};
use crate::source::{LayerObserver, PulledImage};

/// `creation_date` of images whose config has no `created`: fixed (reproducible), and not 0,
/// which Incus refuses as "Missing creation date".
pub const NO_CREATION_DATE: i64 = 1;

/// What goes into `metadata.yaml`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IncusMetadata {
    /// Incus' architecture name (`x86_64`, `aarch64`).
    pub architecture: String,
    /// Unix seconds; taken from the base config's `created` (else [`NO_CREATION_DATE`]) so
    /// the tarball, and with it the Incus fingerprint, is the same on every conversion.
    pub creation_date: i64,
    pub properties: BTreeMap<String, String>,
}

impl IncusMetadata {
    pub fn for_image(image: &AtlasImage) -> IncusMetadata {
        let created = serde_json::from_slice::<serde_json::Value>(&image.base.config_bytes)
            .ok()
            .and_then(|v| v.get("created")?.as_str().and_then(parse_rfc3339))
            .filter(|t| *t > 0)
            .unwrap_or(NO_CREATION_DATE);
        IncusMetadata {
            architecture: incus_architecture(&image.base.platform.architecture),
            creation_date: created,
            properties: image.incus_properties(),
        }
    }

    /// The YAML text. Every string is double-quoted with JSON escapes, which is valid YAML.
    pub fn to_yaml(&self) -> String {
        let q = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned());
        let mut out = format!(
            "architecture: {}\ncreation_date: {}\nproperties:\n",
            q(&self.architecture),
            self.creation_date
        );
        for (k, v) in &self.properties {
            out.push_str(&format!("  {}: {}\n", q(k), q(v)));
        }
        out
    }
}

/// OCI architecture names to the kernel names Incus uses.
pub fn incus_architecture(oci: &str) -> String {
    match oci {
        "amd64" => "x86_64",
        "arm64" => "aarch64",
        "386" => "i686",
        "arm" => "armv7l",
        "ppc64le" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    }
    .to_owned()
}

/// `2024-05-01T12:34:56.789Z` / `...+02:00` to Unix seconds (fractions dropped).
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && matches!(&rest[..1], "+" | "-") && &rest[3..4] == ":" => {
            let oh: i64 = rest[1..3].parse().ok()?;
            let om: i64 = rest[4..6].parse().ok()?;
            let sign = if &rest[..1] == "-" { -1 } else { 1 };
            sign * (oh * 3600 + om * 60)
        }
        _ => return None,
    };
    // Days from civil (proleptic Gregorian), as in Howard Hinnant's date algorithms.
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + mi * 60 + sec - offset)
}

/// The image's layers, bottom to top, as flattener inputs (base blobs read from where the
/// pull left them, verified; then the Atlas layer from memory).
pub fn flatten_inputs(image: &AtlasImage) -> Vec<Layer> {
    let base = Arc::new(image.base.clone());
    let mut out: Vec<Layer> = base_layers(&base);
    if let Some(l) = &image.layer {
        out.push(layer_input(l));
    }
    out
}

pub(crate) fn base_layers(base: &Arc<PulledImage>) -> Vec<Layer> {
    (0..base.layers.len())
        .map(|i| {
            let img = Arc::clone(base);
            let l = &base.layers[i];
            Layer::new(
                l.digest.to_string(),
                Some(l.media_type.clone()),
                move || img.open_layer(i).map_err(io::Error::other),
            )
        })
        .collect()
}

/// One index per layer: those of `known` that belong to the layer at their position (others
/// are ignored, not trusted), the rest indexed here (in parallel, `threads` 0 = one per core).
pub(crate) fn complete_indexes(
    layers: &[Layer],
    known: Vec<Option<LayerIndex>>,
    threads: usize,
) -> Result<Vec<LayerIndex>, LayerError> {
    let mut slots = known;
    slots.resize_with(layers.len(), || None);
    slots.truncate(layers.len());
    for (slot, layer) in slots.iter_mut().zip(layers) {
        if slot.as_ref().is_some_and(|i| i.digest != layer.digest) {
            *slot = None;
        }
    }
    let missing: Vec<Layer> = layers
        .iter()
        .zip(&slots)
        .filter(|(_, s)| s.is_none())
        .map(|(l, _)| l.clone())
        .collect();
    let mut fresh = index_layers(&missing, threads)?.into_iter();
    slots
        .into_iter()
        .map(|s| s.or_else(|| fresh.next()))
        .collect::<Option<_>>()
        .ok_or(LayerError::IndexCount {
            count: layers.len(),
            indexes: 0,
        })
}

/// A unified tarball whose every layer was read and checked (indexed and merged) but of
/// which nothing was written yet: once this exists, only a blob that changes under us or
/// the output can still fail. Callers that must not start a side effect (an Incus import)
/// on bad input prepare first.
pub struct PreparedUnified {
    layers: Vec<Layer>,
    indexes: Vec<LayerIndex>,
    opts: FlattenOptions,
    sbom: Vec<u8>,
}

/// The member of the unified tarball (next to `metadata.yaml`, outside `rootfs/`) holding the
/// image's bill of materials: Incus keeps the tarball as the image, so it stays with it.
pub const SBOM_MEMBER: &str = "sbom.cdx.json";

impl PreparedUnified {
    /// Indexes every layer (in parallel, `threads` 0 = one per core) and merges the stack.
    pub fn new(image: &AtlasImage, threads: usize) -> Result<PreparedUnified, BuildError> {
        PreparedUnified::with_indexes(image, Vec::new(), threads)
    }

    /// Like [`PreparedUnified::new`], reusing base layer indexes computed while pulling
    /// ([`IndexingObserver`]); the layers without one (and the Atlas layer) are indexed here.
    pub fn with_indexes(
        image: &AtlasImage,
        known: Vec<Option<LayerIndex>>,
        threads: usize,
    ) -> Result<PreparedUnified, BuildError> {
        let what = format!("converting {}", image.base.source);
        let layers = flatten_inputs(image);
        let indexes =
            complete_indexes(&layers, known, threads).map_err(|error| BuildError::Flatten {
                what: what.clone(),
                error,
            })?;
        Plan::merge(&indexes).map_err(|error| BuildError::Flatten { what, error })?;
        let meta = IncusMetadata::for_image(image);
        // Read from the indexes (made in the pass that checked the layers): no extra read.
        let sbom = super::sbom(image, &indexes, &image.spec.name)?;
        Ok(PreparedUnified {
            layers,
            indexes,
            opts: FlattenOptions {
                prefix: Some("rootfs".to_owned()),
                threads,
                leading_files: vec![
                    ("metadata.yaml".to_owned(), meta.to_yaml().into_bytes()),
                    (SBOM_MEMBER.to_owned(), sbom.clone()),
                ],
            },
            sbom,
        })
    }

    /// The image's bill of materials (CycloneDX JSON), also written as [`SBOM_MEMBER`].
    pub fn sbom(&self) -> &[u8] {
        &self.sbom
    }

    /// Streams the tarball into `out`.
    pub fn write<W: Write>(&self, out: W) -> Result<FlattenStats, BuildError> {
        let plan = Plan::merge(&self.indexes).map_err(|error| BuildError::Flatten {
            what: "writing the unified tarball".to_owned(),
            error,
        })?;
        plan.write(&self.layers, out, &self.opts)
            .map_err(|error| BuildError::Flatten {
                what: "writing the unified tarball".to_owned(),
                error,
            })
    }
}

/// A [`LayerObserver`] that indexes every layer while the pull reads it (download, cache or
/// layout verification), so the flattener does not read the layers an extra time. Give it
/// to [`crate::source::PullOptions::observer`], then [`IndexingObserver::take`] the indexes.
#[derive(Default)]
pub struct IndexingObserver {
    slots: Arc<Mutex<Vec<Option<LayerIndex>>>>,
}

impl IndexingObserver {
    pub fn new() -> Arc<IndexingObserver> {
        Arc::new(IndexingObserver::default())
    }

    /// The indexes by layer position; `None` where a layer was not seen or its index
    /// failed (the flattener then indexes it again and reports the error properly).
    pub fn take(&self) -> Vec<Option<LayerIndex>> {
        std::mem::take(&mut *self.slots.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl LayerObserver for IndexingObserver {
    fn layer(&self, index: usize, layer: &crate::source::Layer) -> Option<Box<dyn Write + Send>> {
        Some(Box::new(IndexSink {
            indexer: Some(Indexer::new(
                &layer.digest.to_string(),
                Some(&layer.media_type),
            )),
            position: index,
            slots: Arc::clone(&self.slots),
        }))
    }
}

/// Feeds one layer's bytes to an [`Indexer`]; the index is stored when the pull drops it.
struct IndexSink {
    indexer: Option<Indexer>,
    position: usize,
    slots: Arc<Mutex<Vec<Option<LayerIndex>>>>,
}

impl Write for IndexSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.indexer {
            Some(i) => i.write(buf),
            None => Ok(buf.len()),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for IndexSink {
    fn drop(&mut self) {
        let Some(indexer) = self.indexer.take() else {
            return;
        };
        let index = indexer.finish().ok();
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if slots.len() <= self.position {
            slots.resize_with(self.position + 1, || None);
        }
        slots[self.position] = index;
    }
}

/// Prepares and writes the unified tarball of `image` into `out` in one call.
pub fn write_unified<W: Write>(
    image: &AtlasImage,
    out: W,
    threads: usize,
) -> Result<FlattenStats, BuildError> {
    PreparedUnified::new(image, threads)?.write(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339("2024-02-29T12:00:01.123456789Z"),
            Some(1_709_208_001)
        );
        assert_eq!(
            parse_rfc3339("2024-02-29T14:00:01+02:00"),
            Some(1_709_208_001)
        );
        assert_eq!(parse_rfc3339("2024-02-29"), None);
        assert_eq!(parse_rfc3339("2024-13-01T00:00:00Z"), None);
    }

    #[test]
    fn metadata_yaml_is_quoted() {
        let m = IncusMetadata {
            architecture: "x86_64".into(),
            creation_date: 5,
            properties: BTreeMap::from([("description".into(), "a: \"b\"\n".into())]),
        };
        assert_eq!(
            m.to_yaml(),
            "architecture: \"x86_64\"\ncreation_date: 5\nproperties:\n  \"description\": \"a: \\\"b\\\"\\n\"\n"
        );
    }
}

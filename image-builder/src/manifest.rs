//! OCI / Docker schema 2 documents: descriptors, image manifests, image indexes and the
//! parts of the image config the pipeline uses. Raw bytes are always kept next to the
//! parsed form: digests are over the bytes, and re-serialising would change them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::platform::Platform;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const DOCKER_LAYER_FOREIGN_GZIP: &str =
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
/// The annotation naming an image inside an OCI layout's index.json.
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// Manifests and configs are read into memory; anything larger is not a real one.
pub const MAX_DOCUMENT_SIZE: u64 = 16 << 20;

/// Every manifest media type we ask registries for.
pub const ACCEPTED_MANIFEST_TYPES: &[&str] = &[
    OCI_MANIFEST,
    OCI_INDEX,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
];

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{what} is not valid JSON for its kind: {source}")]
    Json {
        what: String,
        source: serde_json::Error,
    },
    #[error(
        "{what} has media type {media_type:?}, which is not an image manifest or index; supported: {supported}"
    )]
    MediaType {
        what: String,
        media_type: String,
        supported: String,
    },
    #[error(
        "{what} is a Docker schema 1 manifest; it is deprecated and unsupported: \
         re-push the image with a current tool (skopeo copy converts it)"
    )]
    Schema1 { what: String },
    #[error(
        "{what} declares {size} bytes; manifests and configs above {max} bytes are refused as hostile"
    )]
    TooLarge { what: String, size: u64, max: u64 },
    #[error(
        "{what} has layer {digest} with media type {media_type:?}; supported are tar, tar+gzip and tar+zstd layers"
    )]
    LayerMediaType {
        what: String,
        digest: Digest,
        media_type: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// Fields we do not model (artifactType, data...), kept so a layout's index.json
    /// survives being rewritten.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Descriptor {
    pub fn new(media_type: &str, digest: Digest, size: u64) -> Self {
        Self {
            media_type: media_type.to_owned(),
            digest,
            size,
            urls: None,
            annotations: None,
            platform: None,
            extra: BTreeMap::new(),
        }
    }

    pub fn ref_name(&self) -> Option<&str> {
        self.annotations
            .as_ref()?
            .get(REF_NAME_ANNOTATION)
            .map(String::as_str)
    }

    pub fn is_index(&self) -> bool {
        self.media_type == OCI_INDEX || self.media_type == DOCKER_MANIFEST_LIST
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageIndex {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// A manifest document as fetched: either one image or an index of them.
#[derive(Clone, Debug)]
pub enum Manifest {
    Image(Box<ImageManifest>),
    Index(ImageIndex),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    #[serde(default)]
    schema_version: Option<u32>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
}

impl Manifest {
    /// Parses a manifest or index. The media type comes from the document, else from the
    /// transport (`Content-Type`, descriptor), else from its shape.
    pub fn parse(
        bytes: &[u8],
        transport_type: Option<&str>,
        what: &str,
    ) -> Result<Self, ManifestError> {
        let json = |source| ManifestError::Json {
            what: what.to_owned(),
            source,
        };
        let probe: Probe = serde_json::from_slice(bytes).map_err(json)?;
        if probe.schema_version == Some(1) {
            return Err(ManifestError::Schema1 {
                what: what.to_owned(),
            });
        }
        let media_type = probe
            .media_type
            .or_else(|| transport_type.map(str::to_owned))
            .unwrap_or_else(|| {
                if probe.manifests.is_some() {
                    OCI_INDEX
                } else {
                    OCI_MANIFEST
                }
                .to_owned()
            });
        match media_type.as_str() {
            OCI_MANIFEST | DOCKER_MANIFEST => {
                let m: ImageManifest = serde_json::from_slice(bytes).map_err(json)?;
                for l in &m.layers {
                    if Compression::from_media_type(&l.media_type).is_none() {
                        return Err(ManifestError::LayerMediaType {
                            what: what.to_owned(),
                            digest: l.digest.clone(),
                            media_type: l.media_type.clone(),
                        });
                    }
                }
                Ok(Self::Image(Box::new(m)))
            }
            OCI_INDEX | DOCKER_MANIFEST_LIST => {
                Ok(Self::Index(serde_json::from_slice(bytes).map_err(json)?))
            }
            _ => Err(ManifestError::MediaType {
                what: what.to_owned(),
                media_type,
                supported: ACCEPTED_MANIFEST_TYPES.join(", "),
            }),
        }
    }
}

/// How a layer blob is compressed, from its media type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub fn from_media_type(media_type: &str) -> Option<Self> {
        match media_type {
            OCI_LAYER_TAR | "application/vnd.oci.image.layer.nondistributable.v1.tar" => {
                Some(Self::None)
            }
            OCI_LAYER_GZIP
            | DOCKER_LAYER_GZIP
            | DOCKER_LAYER_FOREIGN_GZIP
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip" => Some(Self::Gzip),
            OCI_LAYER_ZSTD | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => {
                Some(Self::Zstd)
            }
            _ => None,
        }
    }
}

/// The runtime part of an image config (`config` in the JSON), the fields Atlas images
/// and the init binary need.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeConfig {
    #[serde(
        rename = "Env",
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_default"
    )]
    pub env: Vec<String>,
    #[serde(
        rename = "Entrypoint",
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_default"
    )]
    pub entrypoint: Vec<String>,
    #[serde(
        rename = "Cmd",
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_default"
    )]
    pub cmd: Vec<String>,
    #[serde(
        rename = "User",
        default,
        skip_serializing_if = "String::is_empty",
        deserialize_with = "null_default"
    )]
    pub user: String,
    #[serde(
        rename = "WorkingDir",
        default,
        skip_serializing_if = "String::is_empty",
        deserialize_with = "null_default"
    )]
    pub working_dir: String,
    #[serde(
        rename = "ExposedPorts",
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_default"
    )]
    pub exposed_ports: BTreeMap<String, serde_json::Value>,
    #[serde(
        rename = "Labels",
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_default"
    )]
    pub labels: BTreeMap<String, String>,
    #[serde(
        rename = "StopSignal",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub stop_signal: Option<String>,
}

/// Docker writes `null` for empty lists and maps; treat it as empty.
fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

/// The image config, parsed. Unknown fields (history, created...) stay in the raw bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub config: RuntimeConfig,
    #[serde(default)]
    pub rootfs: RootFs,
}

impl ImageConfig {
    pub fn parse(bytes: &[u8], what: &str) -> Result<Self, ManifestError> {
        serde_json::from_slice(bytes).map_err(|source| ManifestError::Json {
            what: what.to_owned(),
            source,
        })
    }

    pub fn platform(&self) -> Platform {
        Platform::new(&self.os, &self.architecture, self.variant.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_index_fields_survive_a_rewrite() {
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let raw = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{d}","size":1,
            "artifactType":"application/x-sig","platform":{{"os":"windows","architecture":"amd64","os.version":"10.0"}}}}],
            "subject":{{"x":1}}}}"#
        );
        let index: ImageIndex = serde_json::from_str(&raw).unwrap();
        let back = serde_json::to_value(&index).unwrap();
        assert_eq!(back["subject"]["x"], 1);
        assert_eq!(back["manifests"][0]["artifactType"], "application/x-sig");
        assert_eq!(back["manifests"][0]["platform"]["os.version"], "10.0");
    }

    #[test]
    fn parses_docker_config_with_nulls() {
        let raw = br#"{"architecture":"amd64","os":"linux","config":{"Env":["A=1"],"Cmd":null,
            "Entrypoint":["/bin/x"],"User":"65534","WorkingDir":"/srv","ExposedPorts":{"9090/tcp":{}},
            "Labels":null},"rootfs":{"type":"layers","diff_ids":[]}}"#;
        let c = ImageConfig::parse(raw, "config").unwrap();
        assert_eq!(c.config.env, vec!["A=1"]);
        assert!(c.config.cmd.is_empty());
        assert_eq!(c.config.user, "65534");
        assert!(c.config.exposed_ports.contains_key("9090/tcp"));
        assert_eq!(c.platform().to_string(), "linux/amd64");
    }

    #[test]
    fn refuses_schema1_and_unknown_layers() {
        let e =
            Manifest::parse(br#"{"schemaVersion":1,"name":"x"}"#, None, "manifest x").unwrap_err();
        assert!(e.to_string().contains("schema 1"), "{e}");
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"{OCI_CONFIG}","digest":"{d}","size":0}},
            "layers":[{{"mediaType":"application/x-foo","digest":"{d}","size":0}}]}}"#
        );
        let e = Manifest::parse(m.as_bytes(), None, "manifest x").unwrap_err();
        assert!(e.to_string().contains("application/x-foo"), "{e}");
    }
}

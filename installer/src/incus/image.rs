//! Images and aliases (`/1.0/images`), project-scoped. Import streams the tarball.

use std::collections::BTreeMap;

use reqwest::{Method, Url};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::client::{Client, Etagged, Req, Scope, nullable};
use super::error::IncusError;
use super::resource::Collection;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Image {
    pub fingerprint: String,
    #[serde(default, deserialize_with = "nullable")]
    pub aliases: Vec<ImageAliasRef>,
    #[serde(default, deserialize_with = "nullable")]
    pub properties: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "nullable")]
    pub architecture: String,
    #[serde(default, deserialize_with = "nullable")]
    pub size: u64,
    #[serde(default, deserialize_with = "nullable")]
    pub public: bool,
    #[serde(default, deserialize_with = "nullable")]
    pub auto_update: bool,
    /// `container` or `virtual-machine`.
    #[serde(rename = "type", default, deserialize_with = "nullable")]
    pub kind: String,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageAliasRef {
    pub name: String,
    #[serde(default, deserialize_with = "nullable")]
    pub description: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageAlias {
    pub name: String,
    #[serde(default, deserialize_with = "nullable")]
    pub description: String,
    /// Fingerprint the alias points at.
    #[serde(default, deserialize_with = "nullable")]
    pub target: String,
    #[serde(rename = "type", default, deserialize_with = "nullable")]
    pub kind: String,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// Headers of an import.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImageImport {
    pub aliases: Vec<String>,
    /// Become `image.<key>` on instances. Do not set `type` (it means OCI).
    pub properties: BTreeMap<String, String>,
    /// SHA-256 of the whole upload, hex; Incus checks it when given.
    pub fingerprint: Option<String>,
    pub public: bool,
}

/// `a=1&b=2` with URL encoding, the format of the X-Incus-aliases/properties headers.
fn form_encode<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut u = Url::parse("http://x/").unwrap_or_else(|_| unreachable!("static url"));
    u.query_pairs_mut().extend_pairs(pairs);
    u.query().unwrap_or("").to_string()
}

const IMAGES: Collection = Collection::new("/1.0/images", Scope::Project, &[]);
const ALIASES: Collection = Collection::new("/1.0/images/aliases", Scope::Project, &[]);

impl Client {
    /// `POST /1.0/images` with a unified tarball (`metadata.yaml` + `rootfs/`) streamed as the
    /// body; waits for the import and returns the fingerprint Incus computed. The same bytes
    /// twice answer [`IncusError::AlreadyExists`].
    pub async fn import_image(
        &self,
        body: reqwest::Body,
        import: &ImageImport,
    ) -> Result<String, IncusError> {
        let mut req = Req::new(Method::POST, "/1.0/images", &[])
            .scope(Scope::Project)
            .body_stream(body);
        if !import.aliases.is_empty() {
            let v = form_encode(import.aliases.iter().map(|a| ("alias", a.as_str())));
            req = req.header("x-incus-aliases", &v)?;
        }
        if !import.properties.is_empty() {
            let v = form_encode(
                import
                    .properties
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            );
            req = req.header("x-incus-properties", &v)?;
        }
        if let Some(fp) = &import.fingerprint {
            req = req.header("x-incus-fingerprint", fp)?;
        }
        if import.public {
            req = req.header("x-incus-public", "true")?;
        }
        let meta = self.write(req).await?;
        meta.get("fingerprint")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| IncusError::Decode {
                method: "POST".into(),
                path: "/1.0/images".into(),
                message: format!("import finished without a fingerprint: {meta}"),
            })
    }

    pub async fn images(&self) -> Result<Vec<Image>, IncusError> {
        IMAGES.list(self).await
    }

    pub async fn get_image(&self, fingerprint: &str) -> Result<Etagged<Image>, IncusError> {
        IMAGES.get(self, fingerprint).await
    }

    /// A file from the front of an image's unified tarball (`metadata.yaml`, `sbom.cdx.json`):
    /// the export is streamed and dropped as soon as the member is read, or once `rootfs/`
    /// begins without it (`None`). Images we import are uncompressed tars with these members
    /// first, so only their first kilobytes travel.
    pub async fn image_leading_file(
        &self,
        fingerprint: &str,
        member: &str,
    ) -> Result<Option<Vec<u8>>, IncusError> {
        use futures_util::StreamExt as _;
        let req = Req::get("/1.0/images", &[fingerprint, "export"]).scope(Scope::Project);
        let (resp, method, path) = self.send_streaming(req).await?;
        let endpoint = self.endpoint();
        let mut stream = resp.bytes_stream();
        let mut buf: Vec<u8> = Vec::new();
        // Reads until `buf` holds `need` bytes; false when the export ends first.
        let mut fill = async |buf: &mut Vec<u8>, need: usize| -> Result<bool, IncusError> {
            while buf.len() < need {
                match stream.next().await {
                    Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                    Some(Err(e)) => {
                        return Err(IncusError::Transport {
                            endpoint: endpoint.clone(),
                            method: method.clone(),
                            path: path.clone(),
                            message: e.to_string(),
                        });
                    }
                    None => return Ok(false),
                }
            }
            Ok(true)
        };
        // Leading files are small; a larger one is not ours.
        const MAX: usize = 64 << 20;
        let mut at = 0usize;
        loop {
            if !fill(&mut buf, at + 512).await? {
                return Ok(None);
            }
            let Leading::Entry { name, size, file } = leading_entry(&buf[at..at + 512]) else {
                return Ok(None);
            };
            if size > MAX || name.starts_with("rootfs") {
                return Ok(None);
            }
            if name == member && file {
                let end = at + 512 + size;
                return Ok(fill(&mut buf, end)
                    .await?
                    .then(|| buf[at + 512..end].to_vec()));
            }
            at += 512 + size.div_ceil(512) * 512;
        }
    }

    pub async fn delete_image(&self, fingerprint: &str) -> Result<(), IncusError> {
        IMAGES.delete(self, fingerprint).await
    }

    pub async fn get_image_alias(&self, name: &str) -> Result<Etagged<ImageAlias>, IncusError> {
        ALIASES.get(self, name).await
    }

    pub async fn create_image_alias(
        &self,
        name: &str,
        target: &str,
        description: &str,
    ) -> Result<(), IncusError> {
        let body =
            serde_json::json!({ "name": name, "target": target, "description": description });
        ALIASES.create(self, &body).await.map(|_| ())
    }

    /// Points an existing alias at another image (upgrades).
    pub async fn update_image_alias(
        &self,
        name: &str,
        target: &str,
        description: &str,
        etag: Option<&str>,
    ) -> Result<(), IncusError> {
        let body = serde_json::json!({ "target": target, "description": description });
        ALIASES.update(self, name, &body, etag).await
    }

    pub async fn delete_image_alias(&self, name: &str) -> Result<(), IncusError> {
        ALIASES.delete(self, name).await
    }
}

enum Leading {
    End,
    Entry {
        name: String,
        size: usize,
        file: bool,
    },
}

/// A ustar header block: name (with its prefix), size, and whether it is a regular file.
fn leading_entry(h: &[u8]) -> Leading {
    if h.iter().all(|b| *b == 0) {
        return Leading::End;
    }
    let field = |r: std::ops::Range<usize>| {
        let f = &h[r];
        let end = f.iter().position(|b| *b == 0).unwrap_or(f.len());
        String::from_utf8_lossy(&f[..end]).into_owned()
    };
    let (name, prefix) = (field(0..100), field(345..500));
    let name = if prefix.is_empty() {
        name
    } else {
        format!("{prefix}/{name}")
    };
    let size = usize::from_str_radix(field(124..136).trim(), 8).unwrap_or(usize::MAX / 2);
    Leading::Entry {
        name: name.trim_start_matches("./").to_owned(),
        size,
        file: matches!(h[156], b'0' | 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_are_form_encoded() {
        assert_eq!(
            form_encode([("alias", "atlas/grafana"), ("alias", "b c")]),
            "alias=atlas%2Fgrafana&alias=b+c"
        );
        assert_eq!(form_encode([("os", "Atlas&co")]), "os=Atlas%26co");
    }
}

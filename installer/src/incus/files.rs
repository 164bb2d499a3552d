//! Files in instances (`/1.0/instances/<n>/files?path=`). Works on stopped instances, which
//! is how configs land before the first start.

use reqwest::Method;

use super::client::{Client, Req, Scope};
use super::error::IncusError;

/// Owner and mode from the `X-Incus-uid/gid/mode` headers of a files API answer.
fn meta_of(headers: &reqwest::header::HeaderMap) -> FileMeta {
    let num = |k: &str, radix: u32| {
        headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| u32::from_str_radix(v.trim_start_matches("0o"), radix).ok())
    };
    FileMeta::new(
        num("x-incus-uid", 10).unwrap_or(0),
        num("x-incus-gid", 10).unwrap_or(0),
        num("x-incus-mode", 8).unwrap_or(0o644),
    )
}

/// Owner and mode of a pushed file or directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileMeta {
    pub uid: u32,
    pub gid: u32,
    /// e.g. 0o644.
    pub mode: u32,
}

impl FileMeta {
    pub const fn new(uid: u32, gid: u32, mode: u32) -> FileMeta {
        FileMeta { uid, gid, mode }
    }
}

fn file_req(name: &str, path: &str, kind: &str, meta: FileMeta) -> Result<Req, IncusError> {
    Req::new(Method::POST, "/1.0/instances", &[name, "files"])
        .scope(Scope::Project)
        .query("path", path)
        .header("x-incus-type", kind)?
        .header("x-incus-uid", &meta.uid.to_string())?
        .header("x-incus-gid", &meta.gid.to_string())?
        .header("x-incus-mode", &format!("{:04o}", meta.mode))
}

/// What a path in an instance is, as the files API answers a GET on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileEntry {
    File {
        contents: Vec<u8>,
        meta: FileMeta,
    },
    /// The names in the directory.
    Dir {
        names: Vec<String>,
        meta: FileMeta,
    },
    Symlink {
        target: String,
        meta: FileMeta,
    },
}

impl Client {
    /// Reads a file, a directory listing or a symlink's target, with owner and mode. On a
    /// stopped instance this is its root filesystem alone (custom volumes are mounted only
    /// while it runs).
    pub async fn read_entry(&self, instance: &str, path: &str) -> Result<FileEntry, IncusError> {
        let req = Req::get("/1.0/instances", &[instance, "files"])
            .scope(Scope::Project)
            .query("path", path);
        let (bytes, headers) = self.get_raw_with_headers(req).await?;
        let meta = meta_of(&headers);
        let kind = headers
            .get("x-incus-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("file");
        match kind {
            "directory" => {
                let env: serde_json::Value =
                    serde_json::from_slice(&bytes).map_err(|e| IncusError::Decode {
                        method: "GET".into(),
                        path: format!("{instance}:{path}"),
                        message: format!("a directory listing that is not JSON: {e}"),
                    })?;
                let names = env["metadata"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|n| n.as_str().map(str::to_string))
                    .collect();
                Ok(FileEntry::Dir { names, meta })
            }
            "symlink" => Ok(FileEntry::Symlink {
                target: String::from_utf8_lossy(&bytes).into_owned(),
                meta,
            }),
            _ => Ok(FileEntry::File {
                contents: bytes,
                meta,
            }),
        }
    }

    /// Writes (overwrites) a file. The parent directory must exist (else NotFound).
    pub async fn push_file(
        &self,
        instance: &str,
        path: &str,
        content: Vec<u8>,
        meta: FileMeta,
    ) -> Result<(), IncusError> {
        // Content-Type octet-stream is set by the payload kind: without it Incus may write 0 bytes.
        let req = file_req(instance, path, "file", meta)?
            .header("x-incus-write", "overwrite")?
            .body_bytes(content);
        self.write(req).await.map(|_| ())
    }

    /// Creates a directory (its parent must exist).
    pub async fn mkdir(
        &self,
        instance: &str,
        path: &str,
        meta: FileMeta,
    ) -> Result<(), IncusError> {
        self.write(file_req(instance, path, "directory", meta)?)
            .await
            .map(|_| ())
    }

    /// Removes a file (Incus `file_delete`); a missing file is NotFound.
    pub async fn delete_file(&self, instance: &str, path: &str) -> Result<(), IncusError> {
        let req = Req::new(Method::DELETE, "/1.0/instances", &[instance, "files"])
            .scope(Scope::Project)
            .query("path", path);
        self.write(req).await.map(|_| ())
    }

    /// Reads a file's bytes.
    pub async fn pull_file(&self, instance: &str, path: &str) -> Result<Vec<u8>, IncusError> {
        self.pull_file_with_meta(instance, path)
            .await
            .map(|(bytes, _)| bytes)
    }

    /// Reads a file's bytes with its owner and mode (from the `X-Incus-*` headers).
    pub async fn pull_file_with_meta(
        &self,
        instance: &str,
        path: &str,
    ) -> Result<(Vec<u8>, FileMeta), IncusError> {
        let req = Req::get("/1.0/instances", &[instance, "files"])
            .scope(Scope::Project)
            .query("path", path);
        let (bytes, headers) = self.get_raw_with_headers(req).await?;
        Ok((bytes, meta_of(&headers)))
    }

    /// A GET whose success body is raw bytes and whose failure is the JSON error shape.
    pub(crate) async fn get_raw(&self, req: Req) -> Result<Vec<u8>, IncusError> {
        self.get_raw_with_headers(req).await.map(|(b, _)| b)
    }

    async fn get_raw_with_headers(
        &self,
        req: Req,
    ) -> Result<(Vec<u8>, reqwest::header::HeaderMap), IncusError> {
        let (resp, method, path) = self.send_streaming(req).await?;
        let headers = resp.headers().clone();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| self.read_error(&e, &method, &path))?;
        Ok((bytes.to_vec(), headers))
    }
}

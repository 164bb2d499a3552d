//! Files in instances (`/1.0/instances/<n>/files?path=`). Works on stopped instances, which
//! is how configs land before the first start.

use reqwest::Method;

use super::client::{Client, Req, Scope};
use super::error::IncusError;

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

impl Client {
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
        let num = |k: &str, radix: u32| {
            headers
                .get(k)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| u32::from_str_radix(v.trim_start_matches("0o"), radix).ok())
        };
        let meta = FileMeta::new(
            num("x-incus-uid", 10).unwrap_or(0),
            num("x-incus-gid", 10).unwrap_or(0),
            num("x-incus-mode", 8).unwrap_or(0o644),
        );
        Ok((bytes, meta))
    }

    /// A GET whose success body is raw bytes and whose failure is the JSON error shape.
    pub(crate) async fn get_raw(&self, req: Req) -> Result<Vec<u8>, IncusError> {
        self.get_raw_with_headers(req).await.map(|(b, _)| b)
    }

    async fn get_raw_with_headers(
        &self,
        req: Req,
    ) -> Result<(Vec<u8>, reqwest::header::HeaderMap), IncusError> {
        let (resp, method, path) = self.send_raw(req).await?;
        let headers = resp.headers().clone();
        let status = resp.status().as_u16();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| self.read_error(&e, &method, &path))?;
        if status >= 400 {
            let env = super::client::decode_envelope(status, &bytes, &method, &path)?;
            return Err(super::error::classify(
                status,
                env.error_code,
                env.error,
                &method,
                &path,
            ));
        }
        Ok((bytes.to_vec(), headers))
    }
}

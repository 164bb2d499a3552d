//! Single files fetched into the cache by sha256: plugin archives and `[[download]]`
//! binaries. A file is kept (`<cache>/archives/sha256/<hex>`) only once its bytes hash to the
//! expected digest; without one (a first download, pinned by the caller) the digest of what
//! arrived is returned. Streams to disk, never holding the file in memory.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use futures_util::StreamExt;

use crate::digest::{Digest, Hasher};
use crate::reference::is_loopback_host;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot fetch {url}: {detail}")]
    Fetch { url: String, detail: String },
    #[error(
        "{url} served {actual}, but {expected} is pinned: the file changed or was tampered \\
         with; nothing was kept (check the source, then update the pin)"
    )]
    Mismatch {
        url: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("download cache {path}: {source}")]
    Cache { path: PathBuf, source: io::Error },
}

/// Where a fetched file with `digest` is kept.
pub fn cached_path(cache_root: &Path, digest: &Digest) -> PathBuf {
    cache_root
        .join("archives")
        .join(digest.algorithm())
        .join(digest.hex())
}

/// Fetches `url` unless a file with `expected` is cached; returns its cache path and digest.
/// Local paths are relative to `base_dir`; plain HTTP only to loopback and `insecure_hosts`.
pub async fn fetch(
    url: &str,
    expected: Option<&Digest>,
    cache_root: &Path,
    base_dir: &Path,
    insecure_hosts: &[String],
) -> Result<(PathBuf, Digest), FetchError> {
    if let Some(d) = expected {
        let dest = cached_path(cache_root, d);
        if dest.is_file() {
            return Ok((dest, d.clone()));
        }
    }
    let dir = cache_root.join("archives").join("sha256");
    let cache_err = |source| FetchError::Cache {
        path: dir.clone(),
        source,
    };
    fs::create_dir_all(&dir).map_err(cache_err)?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let partial = dir.join(format!(".partial.{}.{stamp}", std::process::id()));
    let mut out = File::create(&partial).map_err(cache_err)?;
    let mut hasher = Hasher::new();
    let copied = copy_source(url, base_dir, insecure_hosts, &mut out, &mut hasher)
        .await
        .and_then(|()| out.sync_all().map_err(|e| e.to_string()));
    if let Err(detail) = copied {
        let _ = fs::remove_file(&partial);
        return Err(FetchError::Fetch {
            url: url.to_owned(),
            detail,
        });
    }
    let (actual, _) = hasher.finish();
    if let Some(expected) = expected.filter(|e| **e != actual) {
        let _ = fs::remove_file(&partial);
        return Err(FetchError::Mismatch {
            url: url.to_owned(),
            expected: expected.clone(),
            actual,
        });
    }
    let dest = cached_path(cache_root, &actual);
    fs::rename(&partial, &dest).map_err(cache_err)?;
    Ok((dest, actual))
}

async fn copy_source(
    url: &str,
    base_dir: &Path,
    insecure_hosts: &[String],
    out: &mut File,
    hasher: &mut Hasher,
) -> Result<(), String> {
    let mut sink = |bytes: &[u8]| -> Result<(), String> {
        hasher.update(bytes);
        out.write_all(bytes)
            .map_err(|e| format!("writing the cache: {e}"))
    };
    if url.starts_with("https://") || url.starts_with("http://") {
        let parsed = reqwest::Url::parse(url).map_err(|e| e.to_string())?;
        let host = parsed.host_str().unwrap_or_default();
        let host_port = match parsed.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_owned(),
        };
        if parsed.scheme() == "http"
            && !is_loopback_host(host)
            && !insecure_hosts.iter().any(|h| *h == host_port || *h == host)
        {
            return Err(format!(
                "plain HTTP to {host_port} is refused: use https:// (or list the host as an insecure registry)"
            ));
        }
        let limit = crate::registry::READ_TIMEOUT;
        let client = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(15))
            .read_timeout(limit)
            .build()
            .map_err(|e| e.to_string())?;
        let failed = |e: reqwest::Error| match e.is_timeout() && !e.is_connect() {
            true => format!(
                "{host_port} did not answer within {} s: it accepted the connection but sent nothing",
                limit.as_secs()
            ),
            false => e.to_string(),
        };
        let resp = client.get(parsed).send().await.map_err(failed)?;
        let status = resp.status();
        if !status.is_success() {
            return Err(format!("the server answered {status}"));
        }
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            sink(&chunk.map_err(failed)?)?;
        }
        return Ok(());
    }
    let path = match url.strip_prefix("file://") {
        Some(p) => PathBuf::from(p),
        None => base_dir.join(url),
    };
    let mut f = File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if n == 0 {
            return Ok(());
        }
        sink(&buf[..n])?;
    }
}

/// Where `url` is fetched from through `mirror`: `<mirror>/<host><path>`, plus `?<query>` for
/// an HTTP(S) mirror. A `file://DIR` mirror drops the query (a directory of files, one per
/// host and path, for one architecture).
pub fn mirror_url(url: &str, mirror: &str) -> String {
    let Ok(u) = reqwest::Url::parse(url) else {
        return url.to_owned();
    };
    let host = match u.port() {
        Some(p) => format!("{}:{p}", u.host_str().unwrap_or_default()),
        None => u.host_str().unwrap_or_default().to_owned(),
    };
    let base = mirror.trim_end_matches('/');
    match (base.starts_with("file://"), u.query()) {
        (false, Some(q)) => format!("{base}/{host}{}?{q}", u.path()),
        _ => format!("{base}/{host}{}", u.path()),
    }
}

/// A recipe's `[[download]]` for `arch`: by the recipe's own sha256, else `known` (the lock's
/// or an earlier pin), else whatever arrives. Returns the cache path, the digest, and the
/// expanded URL. The caller pins a digest it did not know.
pub async fn fetch_recipe_download(
    d: &crate::recipe::Download,
    arch: &str,
    known: Option<&Digest>,
    mirror: Option<&str>,
    cache_root: &Path,
    insecure_hosts: &[String],
) -> Result<(PathBuf, Digest, String), FetchError> {
    let url = d.url_for(arch);
    let pinned = match &d.sha256 {
        Some(s) => Some(Digest::parse(s).map_err(|e| FetchError::Fetch {
            url: url.clone(),
            detail: format!("the recipe's sha256: {e}"),
        })?),
        None => known.cloned(),
    };
    let from = mirror.map_or_else(|| url.clone(), |m| mirror_url(&url, m));
    let (path, digest) = fetch(
        &from,
        pinned.as_ref(),
        cache_root,
        Path::new("/"),
        insecure_hosts,
    )
    .await
    .map_err(|e| match e {
        // Name the upstream URL the pin belongs to, and the mirror it came through.
        FetchError::Mismatch {
            expected, actual, ..
        } => FetchError::Mismatch {
            url: if from == url {
                url.clone()
            } else {
                format!("{url} (through {from})")
            },
            expected,
            actual,
        },
        other => other,
    })?;
    Ok((path, digest, url))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_keep_host_and_path() {
        let u = "https://caddyserver.com/api/download?os=linux&arch=amd64&p=x";
        assert_eq!(
            mirror_url(u, "http://127.0.0.1:8000/m/"),
            "http://127.0.0.1:8000/m/caddyserver.com/api/download?os=linux&arch=amd64&p=x"
        );
        assert_eq!(
            mirror_url(u, "file:///srv/mirror"),
            "file:///srv/mirror/caddyserver.com/api/download"
        );
        assert_eq!(
            mirror_url("https://h:8443/a/b", "file:///m"),
            "file:///m/h:8443/a/b"
        );
    }

    #[tokio::test]
    async fn a_pinned_download_is_kept_only_with_its_digest() {
        let dir = std::env::temp_dir().join(format!("atlas-dl-{}", std::process::id()));
        let cache = dir.join("cache");
        fs::create_dir_all(&dir).unwrap();
        let src = dir.join("file.bin");
        fs::write(&src, b"release bytes").unwrap();
        let url = format!("file://{}", src.display());
        let (path, digest) = fetch(&url, None, &cache, Path::new("/"), &[])
            .await
            .unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"release bytes");
        assert_eq!(path, cached_path(&cache, &digest));
        // Cached: found by digest even once the source is gone.
        fs::remove_file(&src).unwrap();
        let again = fetch(&url, Some(&digest), &cache, Path::new("/"), &[])
            .await
            .unwrap();
        assert_eq!(again.0, path);
        // Other bytes than pinned: refused, nothing kept.
        fs::write(&src, b"tampered").unwrap();
        fs::remove_dir_all(&cache).unwrap();
        let e = fetch(&url, Some(&digest), &cache, Path::new("/"), &[])
            .await
            .unwrap_err();
        assert!(matches!(e, FetchError::Mismatch { .. }), "{e}");
        assert!(e.to_string().contains(&digest.to_string()), "{e}");
        let left: Vec<_> = fs::read_dir(cache.join("archives/sha256"))
            .unwrap()
            .collect();
        assert!(left.is_empty(), "nothing kept: {left:?}");
        // Plain HTTP elsewhere than loopback is refused before any connection.
        let e = fetch(
            "http://example.invalid/x",
            None,
            &cache,
            Path::new("/"),
            &[],
        )
        .await
        .unwrap_err();
        assert!(e.to_string().contains("plain HTTP"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }
}

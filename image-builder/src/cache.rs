//! The content-addressed blob cache: `<root>/blobs/sha256/<hex>`, the same shape as an OCI
//! layout's blob directory (so a layout is written with this code too).
//!
//! A blob is written to `<hex>.partial`, verified (size and sha256 over the whole file), then
//! fsynced and renamed into place: a file under its final name is always complete and correct.
//! The partial file is locked while written, so two processes pulling the same blob do not
//! interleave; the second waits and then finds the finished blob. A partial file left by an
//! interrupted pull is where the next pull resumes.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::digest::{Digest, Hasher};

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error(
        "blob cache: cannot {action} {path}: {source}; check that the directory is writable (or choose another cache directory)"
    )]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "blob {digest} from {source_name} has digest {actual}: the content is corrupt or was tampered with; nothing was kept in the cache"
    )]
    DigestMismatch {
        digest: Digest,
        actual: Digest,
        source_name: String,
    },
    #[error(
        "blob {digest} from {source_name} is {actual} bytes, its descriptor says {expected}; nothing was kept in the cache"
    )]
    SizeMismatch {
        digest: Digest,
        expected: u64,
        actual: u64,
        source_name: String,
    },
    #[error(
        "blob {digest} from {source_name} is longer than the {expected} bytes its descriptor says; nothing was kept in the cache"
    )]
    TooLong {
        digest: Digest,
        expected: u64,
        source_name: String,
    },
    #[error("blob {digest} is not in {root}")]
    Missing { digest: Digest, root: PathBuf },
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CacheError + 'a {
    move |source| CacheError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// Counters a caller (and the tests) read to see what a pull did.
#[derive(Debug, Default)]
pub struct CacheStats {
    hits: AtomicU64,
    fetched: AtomicU64,
    resumed: AtomicU64,
    bytes_fetched: AtomicU64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStatsSnapshot {
    /// Blobs found complete in the cache: no request was made for them.
    pub hits: u64,
    /// Blobs written into the cache (downloaded or copied in).
    pub fetched: u64,
    /// Of those, how many continued a partial file.
    pub resumed: u64,
    /// Bytes received from the source (a resumed blob counts only the new bytes).
    pub bytes_fetched: u64,
}

impl CacheStats {
    pub(crate) fn hit(&self) {
        self.hits.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn fetched(&self, resumed: bool) {
        self.fetched.fetch_add(1, Ordering::Relaxed);
        if resumed {
            self.resumed.fetch_add(1, Ordering::Relaxed);
        }
    }
    pub(crate) fn bytes(&self, n: u64) {
        self.bytes_fetched.fetch_add(n, Ordering::Relaxed);
    }
    pub fn snapshot(&self) -> CacheStatsSnapshot {
        CacheStatsSnapshot {
            hits: self.hits.load(Ordering::Relaxed),
            fetched: self.fetched.load(Ordering::Relaxed),
            resumed: self.resumed.load(Ordering::Relaxed),
            bytes_fetched: self.bytes_fetched.load(Ordering::Relaxed),
        }
    }
}

#[derive(Clone, Debug)]
pub struct BlobCache {
    root: PathBuf,
    stats: Arc<CacheStats>,
}

/// What [`BlobCache::reserve`] found.
pub enum Reservation {
    /// The blob is complete in the cache.
    Present(PathBuf),
    /// The caller holds the write lock and must fill this partial file.
    Write(Box<PartialBlob>),
}

impl BlobCache {
    /// Opens (creating) a cache rooted at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, CacheError> {
        let root = root.into();
        let dir = root.join("blobs").join("sha256");
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        Ok(Self {
            root,
            stats: Arc::default(),
        })
    }

    /// `/var/cache/atlas-install` for root, else `$XDG_CACHE_HOME/atlas-install`
    /// (`~/.cache/atlas-install`).
    pub fn default_dir() -> PathBuf {
        // The owner of /proc/self is our effective uid; this avoids unsafe libc calls.
        let is_root = fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
        if is_root {
            return PathBuf::from("/var/cache/atlas-install");
        }
        let base = std::env::var_os("XDG_CACHE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(std::env::temp_dir);
        base.join("atlas-install")
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn stats(&self) -> CacheStatsSnapshot {
        self.stats.snapshot()
    }

    pub(crate) fn stats_handle(&self) -> &CacheStats {
        &self.stats
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join(digest.algorithm())
            .join(digest.hex())
    }

    pub fn partial_path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join(digest.algorithm())
            .join(format!("{}.partial", digest.hex()))
    }

    /// True when the complete blob is present with the expected size. Blobs under their
    /// final name were verified when written, so the digest is not recomputed here.
    pub fn contains(&self, digest: &Digest, size: u64) -> bool {
        fs::metadata(self.blob_path(digest)).is_ok_and(|m| m.is_file() && m.len() == size)
    }

    pub fn open_blob(&self, digest: &Digest) -> Result<File, CacheError> {
        let path = self.blob_path(digest);
        File::open(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                CacheError::Missing {
                    digest: digest.clone(),
                    root: self.root.clone(),
                }
            } else {
                CacheError::Io {
                    action: "open",
                    path: path.clone(),
                    source: e,
                }
            }
        })
    }

    /// Reads a complete blob into memory: for manifests and configs only.
    pub fn read_small(&self, digest: &Digest) -> Result<Vec<u8>, CacheError> {
        let mut out = Vec::new();
        let path = self.blob_path(digest);
        self.open_blob(digest)?
            .read_to_end(&mut out)
            .map_err(io_err("read", &path))?;
        Ok(out)
    }

    /// Takes the write lock for `digest`, waiting while another process holds it. Blocking:
    /// call from `spawn_blocking` in async code. `source_name` names where the bytes come
    /// from, for error messages.
    pub fn reserve(
        &self,
        digest: &Digest,
        size: u64,
        source_name: &str,
    ) -> Result<Reservation, CacheError> {
        let final_path = self.blob_path(digest);
        let partial_path = self.partial_path(digest);
        loop {
            if self.contains(digest, size) {
                return Ok(Reservation::Present(final_path));
            }
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&partial_path)
                .map_err(io_err("create", &partial_path))?;
            rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive).map_err(|e| {
                CacheError::Io {
                    action: "lock",
                    path: partial_path.clone(),
                    source: e.into(),
                }
            })?;
            // Another process may have renamed or removed the file we opened while we waited
            // for its lock: only the file still under the partial name is ours to write.
            let ours = file.metadata().map_err(io_err("stat", &partial_path))?;
            match fs::metadata(&partial_path) {
                Ok(now) if now.ino() == ours.ino() && now.dev() == ours.dev() => {}
                _ => continue,
            }
            if self.contains(digest, size) {
                return Ok(Reservation::Present(final_path));
            }
            let mut partial = PartialBlob {
                file,
                path: partial_path.clone(),
                final_path: final_path.clone(),
                hasher: Hasher::new(),
                expected: digest.clone(),
                size,
                source_name: source_name.to_owned(),
                resumed: false,
            };
            partial.prime()?;
            return Ok(Reservation::Write(Box::new(partial)));
        }
    }

    /// Copies a blob from `reader` into the cache, verifying it; `tee` sees every byte.
    /// Returns the final path. A blob already present is not read at all.
    pub fn insert_reader(
        &self,
        digest: &Digest,
        size: u64,
        source_name: &str,
        reader: &mut dyn Read,
        mut tee: Option<&mut dyn Write>,
    ) -> Result<PathBuf, CacheError> {
        let mut partial = match self.reserve(digest, size, source_name)? {
            Reservation::Present(p) => {
                self.stats.hit();
                return Ok(p);
            }
            Reservation::Write(p) => p,
        };
        // A copy from a local reader starts over: it is as cheap as resuming.
        partial.restart()?;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(CacheError::Io {
                        action: "read from source",
                        path: PathBuf::from(source_name),
                        source: e,
                    });
                }
            };
            partial.write(&buf[..n])?;
            if let Some(t) = tee.as_deref_mut() {
                t.write_all(&buf[..n]).map_err(io_err(
                    "write to the layer observer for",
                    Path::new(source_name),
                ))?;
            }
            self.stats.bytes(n as u64);
        }
        let path = partial.commit()?;
        self.stats.fetched(false);
        Ok(path)
    }
}

/// A locked `.partial` file being filled. Dropping it without [`commit`](Self::commit) keeps
/// the bytes for the next pull to resume from.
pub struct PartialBlob {
    file: File,
    path: PathBuf,
    final_path: PathBuf,
    hasher: Hasher,
    expected: Digest,
    size: u64,
    source_name: String,
    resumed: bool,
}

impl PartialBlob {
    /// Bytes already present (where a resumed download starts).
    pub fn offset(&self) -> u64 {
        self.hasher.size()
    }

    pub fn resumed(&self) -> bool {
        self.resumed
    }

    pub fn expected_size(&self) -> u64 {
        self.size
    }

    /// Hashes what an earlier attempt left, so the final digest covers the whole file.
    fn prime(&mut self) -> Result<(), CacheError> {
        let len = self
            .file
            .metadata()
            .map_err(io_err("stat", &self.path))?
            .len();
        if len == 0 {
            return Ok(());
        }
        if len > self.size {
            return self.restart();
        }
        self.file
            .seek(SeekFrom::Start(0))
            .map_err(io_err("read", &self.path))?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut left = len;
        while left > 0 {
            let want = left.min(buf.len() as u64) as usize;
            let n = self
                .file
                .read(&mut buf[..want])
                .map_err(io_err("read", &self.path))?;
            if n == 0 {
                break;
            }
            self.hasher.update(&buf[..n]);
            left -= n as u64;
        }
        self.file
            .seek(SeekFrom::Start(self.hasher.size()))
            .map_err(io_err("seek", &self.path))?;
        self.resumed = self.hasher.size() > 0;
        Ok(())
    }

    /// Feeds the already-present prefix to `sink`, so an observer sees the whole blob.
    pub fn replay_prefix(&mut self, sink: &mut dyn Write) -> Result<(), CacheError> {
        let len = self.hasher.size();
        self.file
            .seek(SeekFrom::Start(0))
            .map_err(io_err("read", &self.path))?;
        let mut prefix = (&mut self.file).take(len);
        io::copy(&mut prefix, sink).map_err(io_err("replay to the layer observer", &self.path))?;
        self.file
            .seek(SeekFrom::Start(len))
            .map_err(io_err("seek", &self.path))?;
        Ok(())
    }

    /// Throws away what is there and starts at byte 0 (the source cannot resume).
    pub fn restart(&mut self) -> Result<(), CacheError> {
        self.file
            .set_len(0)
            .map_err(io_err("truncate", &self.path))?;
        self.file
            .seek(SeekFrom::Start(0))
            .map_err(io_err("seek", &self.path))?;
        self.hasher = Hasher::new();
        self.resumed = false;
        Ok(())
    }

    pub fn write(&mut self, bytes: &[u8]) -> Result<(), CacheError> {
        if self.hasher.size() + bytes.len() as u64 > self.size {
            let err = CacheError::TooLong {
                digest: self.expected.clone(),
                expected: self.size,
                source_name: self.source_name.clone(),
            };
            self.discard();
            return Err(err);
        }
        self.file
            .write_all(bytes)
            .map_err(io_err("write", &self.path))?;
        self.hasher.update(bytes);
        Ok(())
    }

    /// Verifies size and digest over the whole file and moves it under its final name.
    /// On mismatch the partial file is deleted: it can never become correct.
    pub fn commit(mut self) -> Result<PathBuf, CacheError> {
        let hasher = std::mem::take(&mut self.hasher);
        let (actual, size) = hasher.finish();
        if size != self.size {
            let err = CacheError::SizeMismatch {
                digest: self.expected.clone(),
                expected: self.size,
                actual: size,
                source_name: self.source_name.clone(),
            };
            self.discard();
            return Err(err);
        }
        if actual != self.expected {
            let err = CacheError::DigestMismatch {
                digest: self.expected.clone(),
                actual,
                source_name: self.source_name.clone(),
            };
            self.discard();
            return Err(err);
        }
        self.file.sync_all().map_err(io_err("fsync", &self.path))?;
        fs::rename(&self.path, &self.final_path)
            .map_err(io_err("rename into place", &self.final_path))?;
        if let Some(dir) = self.final_path.parent() {
            // The rename is durable only once the directory entry is.
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err("fsync", dir))?;
        }
        Ok(self.final_path.clone())
    }

    /// Removes the partial file (bad content: resuming from it would never verify).
    pub fn discard(&mut self) {
        let _ = fs::remove_file(&self.path);
        self.hasher = Hasher::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache() -> (tempfile::TempDir, BlobCache) {
        let dir = tempfile::tempdir().unwrap();
        let c = BlobCache::open(dir.path()).unwrap();
        (dir, c)
    }

    #[test]
    fn insert_verifies_and_dedups() {
        let (_d, c) = cache();
        let data = b"some layer bytes".to_vec();
        let digest = Digest::of_bytes(&data);
        let mut tee = Vec::new();
        let p = c
            .insert_reader(
                &digest,
                data.len() as u64,
                "test",
                &mut &data[..],
                Some(&mut tee),
            )
            .unwrap();
        assert_eq!(fs::read(&p).unwrap(), data);
        assert_eq!(tee, data);
        c.insert_reader(
            &digest,
            data.len() as u64,
            "test",
            &mut &b"unused"[..],
            None,
        )
        .unwrap();
        let s = c.stats();
        assert_eq!((s.hits, s.fetched), (1, 1));
    }

    #[test]
    fn wrong_digest_leaves_nothing() {
        let (_d, c) = cache();
        let digest = Digest::of_bytes(b"expected");
        let err = c
            .insert_reader(&digest, 8, "src:x", &mut &b"tampered"[..], None)
            .unwrap_err();
        assert!(matches!(err, CacheError::DigestMismatch { .. }), "{err}");
        assert!(err.to_string().contains("src:x") && err.to_string().contains(&digest.to_string()));
        assert!(!c.blob_path(&digest).exists());
        assert!(!c.partial_path(&digest).exists());
        let err = c
            .insert_reader(&digest, 8, "src:x", &mut &b"expected!"[..], None)
            .unwrap_err();
        assert!(matches!(err, CacheError::TooLong { .. }), "{err}");
        assert!(!c.partial_path(&digest).exists());
    }

    #[test]
    fn a_second_writer_waits_for_the_first_and_finds_the_blob() {
        let (_d, c) = cache();
        let data = vec![7u8; 100_000];
        let digest = Digest::of_bytes(&data);
        let Reservation::Write(mut first) = c.reserve(&digest, 100_000, "a").unwrap() else {
            panic!("present")
        };
        let (c2, d2) = (c.clone(), digest.clone());
        let second = std::thread::spawn(move || {
            matches!(
                c2.reserve(&d2, 100_000, "b").unwrap(),
                Reservation::Present(_)
            )
        });
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(
            !second.is_finished(),
            "the second writer did not wait for the lock"
        );
        first.write(&data).unwrap();
        first.commit().unwrap();
        assert!(
            second.join().unwrap(),
            "the second writer did not see the finished blob"
        );
        assert_eq!(fs::read(c.blob_path(&digest)).unwrap(), data);
    }

    #[test]
    fn partial_is_resumed_and_verified_over_whole_file() {
        let (_d, c) = cache();
        let data = b"0123456789abcdef".to_vec();
        let digest = Digest::of_bytes(&data);
        fs::write(c.partial_path(&digest), &data[..6]).unwrap();
        let Reservation::Write(mut p) = c.reserve(&digest, 16, "t").unwrap() else {
            panic!("present")
        };
        assert_eq!(p.offset(), 6);
        assert!(p.resumed());
        let mut replay = Vec::new();
        p.replay_prefix(&mut replay).unwrap();
        assert_eq!(replay, &data[..6]);
        p.write(&data[6..]).unwrap();
        p.commit().unwrap();
        assert!(c.contains(&digest, 16));
        assert!(!c.partial_path(&digest).exists());
    }
}

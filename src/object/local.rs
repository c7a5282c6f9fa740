//! A folder as the object store: keys are `/`-separated paths below the root, the version is
//! the SHA-256 of the content, the sequencer the modification time. Files are never moved or
//! deleted: the ledger is the record of what was loaded.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::SystemTime;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, ReadBuf};

use super::{normalise_sequencer, ObjectRef, ObjectStore, ObjectStream, ResolvedObject, StoreError};

#[derive(Clone)]
pub struct LocalStore {
    root: PathBuf,
    bucket: String,
}

impl LocalStore {
    pub fn new(root: &Path) -> std::io::Result<LocalStore> {
        std::fs::create_dir_all(root)?;
        let root = root.canonicalize()?;
        let bucket = format!("file://{}", root.display());
        Ok(LocalStore { root, bucket })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path_of(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    /// The key of a path below the root, or `None` for files the store ignores:
    /// hidden files and in-progress uploads (`.tmp`, `.part`), which writers should rename into place.
    pub fn key_of(&self, path: &Path) -> Option<String> {
        let rel = path.strip_prefix(&self.root).ok()?;
        let mut parts = Vec::new();
        for c in rel.components() {
            let s = c.as_os_str().to_str()?;
            if s.starts_with('.') {
                return None;
            }
            parts.push(s);
        }
        let key = parts.join("/");
        let ignored = key.is_empty() || key.ends_with(".tmp") || key.ends_with(".part") || key.ends_with('~');
        (!ignored).then_some(key)
    }

    /// Describes a file from its metadata, without reading it.
    pub fn describe(&self, key: &str, meta: &std::fs::Metadata) -> ObjectRef {
        let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        ObjectRef {
            key: key.to_string(),
            version: None,
            sequencer: Some(mtime_sequencer(modified)),
            size: Some(meta.len()),
            event_time: Some(DateTime::<Utc>::from(modified)),
        }
    }

    /// All files below `dir` (recursively), as (key, metadata), sorted by key.
    pub fn walk(&self, dir: &Path) -> std::io::Result<Vec<(String, std::fs::Metadata)>> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            let entries = match std::fs::read_dir(&d) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for entry in entries {
                let entry = entry?;
                let ft = entry.file_type()?;
                let path = entry.path();
                if ft.is_dir() {
                    if !entry.file_name().to_string_lossy().starts_with('.') {
                        stack.push(path);
                    }
                } else if ft.is_file() {
                    if let Some(key) = self.key_of(&path) {
                        match entry.metadata() {
                            Ok(m) => out.push((key, m)),
                            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                            Err(e) => return Err(e),
                        }
                    }
                }
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}

/// Nanoseconds since the epoch, zero-padded: string order is time order.
pub fn mtime_sequencer(t: SystemTime) -> String {
    let nanos = t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    normalise_sequencer(&nanos.to_string())
}

fn io_err(key: &str, e: std::io::Error) -> StoreError {
    if e.kind() == std::io::ErrorKind::NotFound {
        StoreError::NotFound { key: key.to_string() }
    } else {
        StoreError::Io { key: key.to_string(), source: e }
    }
}

pub fn content_version(hash: &[u8]) -> String {
    format!("sha256:{}", hex::encode(hash))
}

#[async_trait::async_trait]
impl ObjectStore for LocalStore {
    fn bucket(&self) -> &str {
        &self.bucket
    }

    fn version_costs_a_read(&self) -> bool {
        true
    }

    async fn ping(&self) -> Result<(), StoreError> {
        match tokio::fs::metadata(&self.root).await {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(io_err("", std::io::Error::other(format!("{} is not a folder", self.root.display())))),
            Err(e) => Err(io_err("", e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectRef>, StoreError> {
        let prefix = prefix.trim_start_matches('/').to_string();
        let this = self.clone();
        let entries = tokio::task::spawn_blocking(move || this.walk(&this.root))
            .await
            .expect("walk does not panic")
            .map_err(|e| io_err(&prefix, e))?;
        Ok(entries.into_iter().filter(|(k, _)| k.starts_with(&prefix)).map(|(k, m)| self.describe(&k, &m)).collect())
    }

    async fn resolve(&self, obj: &ObjectRef) -> Result<ResolvedObject, StoreError> {
        let path = self.path_of(&obj.key);
        let key = obj.key.clone();
        let (meta, hash) = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
            let mut f = std::fs::File::open(&path)?;
            let meta = f.metadata()?;
            let mut h = Sha256::new();
            std::io::copy(&mut f, &mut h)?;
            Ok((meta, h.finalize()))
        })
        .await
        .expect("hashing does not panic")
        .map_err(|e| io_err(&key, e))?;
        let described = self.describe(&obj.key, &meta);
        Ok(ResolvedObject {
            key: obj.key.clone(),
            version: content_version(&hash),
            sequencer: described.sequencer.expect("set by describe"),
            size: meta.len(),
            event_time: described.event_time.expect("set by describe"),
        })
    }

    async fn open(&self, obj: &ResolvedObject) -> Result<ObjectStream, StoreError> {
        let file = tokio::fs::File::open(self.path_of(&obj.key)).await.map_err(|e| io_err(&obj.key, e))?;
        let read_version = Arc::new(OnceLock::new());
        let reader = HashingReader { inner: file, hasher: Some(Sha256::new()), done: read_version.clone() };
        Ok(ObjectStream { reader: Box::new(reader), content_encoding: None, read_version: Some(read_version) })
    }
}

/// Hashes what passes through; at end of stream publishes the content version.
struct HashingReader<R> {
    inner: R,
    hasher: Option<Sha256>,
    done: Arc<OnceLock<String>>,
}

impl<R: AsyncRead + Unpin> AsyncRead for HashingReader<R> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &res {
            let filled = &buf.filled()[before..];
            if filled.is_empty() {
                if let Some(h) = self.hasher.take() {
                    let _ = self.done.set(content_version(&h.finalize()));
                }
            } else if let Some(h) = self.hasher.as_mut() {
                h.update(filled);
            }
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn resolve_hashes_and_open_reports_what_it_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("csv/acme")).unwrap();
        std::fs::write(dir.path().join("csv/acme/a.csv"), b"hello").unwrap();
        std::fs::write(dir.path().join("csv/acme/.hidden.csv"), b"x").unwrap();
        std::fs::write(dir.path().join("csv/acme/b.csv.part"), b"x").unwrap();
        let store = LocalStore::new(dir.path()).unwrap();
        let listed = store.list("csv/").await.unwrap();
        assert_eq!(listed.iter().map(|o| o.key.as_str()).collect::<Vec<_>>(), vec!["csv/acme/a.csv"]);
        let r = store.resolve(&listed[0]).await.unwrap();
        assert_eq!(r.version, "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
        assert_eq!(r.size, 5);
        let mut s = store.open(&r).await.unwrap();
        let mut v = Vec::new();
        s.reader.read_to_end(&mut v).await.unwrap();
        assert_eq!(s.read_version.unwrap().get(), Some(&r.version));
        let missing =
            ObjectRef { key: "nope.csv".into(), version: None, sequencer: None, size: None, event_time: None };
        assert!(matches!(store.resolve(&missing).await, Err(StoreError::NotFound { .. })));
    }
}

//! A folder as the object store: keys are `/`-separated paths below the root, the version is
//! the SHA-256 of the content, the sequencer the modification time. Files are never moved or
//! deleted: the ledger is the record of what was loaded.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::SystemTime;

use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, ReadBuf};

use super::{normalise_sequencer, ObjectRef, ObjectStore, ObjectStream, ResolvedObject, StoreError, LIST_PAGE_OBJECTS};

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
        let key = self.relative_key(path)?;
        let ignored = key.is_empty() || key.ends_with(".tmp") || key.ends_with(".part") || key.ends_with('~');
        (!ignored).then_some(key)
    }

    /// The `/`-joined path below the root, or `None` when a component is hidden or not UTF-8.
    fn relative_key(&self, path: &Path) -> Option<String> {
        let rel = path.strip_prefix(&self.root).ok()?;
        let mut parts = Vec::new();
        for c in rel.components() {
            let s = c.as_os_str().to_str()?;
            if s.starts_with('.') {
                return None;
            }
            parts.push(s);
        }
        Some(parts.join("/"))
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
        SortedWalk::new(self.clone(), dir.to_path_buf(), String::new()).collect()
    }
}

/// A walk of a folder that yields its files in key order — the byte order of the whole
/// `/`-joined key, as S3 lists — holding one sorted directory per level, never the tree.
///
/// Sorting each directory by its entries' names is not enough: `a-b` sorts before `a/x`
/// (`-` < `/`), yet the folder `a` sorts before the file `a-b`. So a folder sorts by its name
/// followed by `/`, which is where all its keys sort; every key below it then comes out
/// between its siblings exactly where byte order puts it.
pub struct SortedWalk {
    store: LocalStore,
    prefix: String,
    /// The folder the walk starts in, until the first `next` reads it.
    start: Option<PathBuf>,
    /// The entries still to visit, one sorted directory per level (deepest last).
    levels: Vec<std::vec::IntoIter<WalkEntry>>,
}

struct WalkEntry {
    /// The name, with `/` after a folder's: the order of the keys below it.
    order: String,
    entry: std::fs::DirEntry,
    is_dir: bool,
}

impl SortedWalk {
    /// The files below `dir` whose keys start with `prefix`.
    pub fn new(store: LocalStore, dir: PathBuf, prefix: String) -> SortedWalk {
        SortedWalk { store, prefix, start: Some(dir), levels: Vec::new() }
    }

    /// The files of the store whose keys start with `prefix`: the walk starts in the deepest
    /// folder the prefix names.
    pub fn of_prefix(store: LocalStore, prefix: &str) -> SortedWalk {
        let prefix = prefix.trim_start_matches('/').to_string();
        let dir = match prefix.rfind('/') {
            Some(i) => store.root.join(&prefix[..i]),
            None => store.root.clone(),
        };
        SortedWalk::new(store, dir, prefix)
    }

    fn read_sorted(&self, dir: &Path) -> std::io::Result<std::vec::IntoIter<WalkEntry>> {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new().into_iter()),
            Err(e) => return Err(e),
        };
        let mut level = Vec::new();
        for entry in entries {
            let entry = entry?;
            // Hidden entries and names that are not UTF-8 have no key (`key_of`).
            let Some(name) = entry.file_name().to_str().map(str::to_string) else { continue };
            if name.starts_with('.') {
                continue;
            }
            let ft = match entry.file_type() {
                Ok(ft) => ft,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if ft.is_dir() {
                level.push(WalkEntry { order: name + "/", entry, is_dir: true });
            } else if ft.is_file() {
                level.push(WalkEntry { order: name, entry, is_dir: false });
            }
        }
        level.sort_unstable_by(|a, b| a.order.cmp(&b.order));
        Ok(level.into_iter())
    }

    /// Can a key below this folder (its key, ending with `/`) start with the prefix?
    fn may_hold_prefix(&self, dir_key: &str) -> bool {
        dir_key.starts_with(&self.prefix) || self.prefix.starts_with(dir_key)
    }
}

impl Iterator for SortedWalk {
    type Item = std::io::Result<(String, std::fs::Metadata)>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(dir) = self.start.take() {
            match self.read_sorted(&dir) {
                Ok(level) => self.levels.push(level),
                Err(err) => return Some(Err(err)),
            }
        }
        loop {
            let level = self.levels.last_mut()?;
            let Some(e) = level.next() else {
                self.levels.pop();
                continue;
            };
            let path = e.entry.path();
            if e.is_dir {
                let Some(dir_key) = self.store.relative_key(&path) else { continue };
                if !self.may_hold_prefix(&format!("{dir_key}/")) {
                    continue;
                }
                match self.read_sorted(&path) {
                    Ok(level) => self.levels.push(level),
                    Err(err) => return Some(Err(err)),
                }
                continue;
            }
            let Some(key) = self.store.key_of(&path) else { continue };
            if !key.starts_with(&self.prefix) {
                continue;
            }
            match e.entry.metadata() {
                Ok(m) => return Some(Ok((key, m))),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                Err(err) => return Some(Err(err)),
            }
        }
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

    /// The sorted walk, a page at a time on the blocking pool.
    fn list_pages(&self, prefix: &str) -> BoxStream<'static, Result<Vec<ObjectRef>, StoreError>> {
        let walk = SortedWalk::of_prefix(self.clone(), prefix);
        let prefix = prefix.to_string();
        futures::stream::unfold(Some(walk), move |walk| {
            let prefix = prefix.clone();
            async move {
                let mut walk = walk?;
                let (walk, page) = tokio::task::spawn_blocking(move || {
                    let mut page = Vec::with_capacity(LIST_PAGE_OBJECTS);
                    while let Some(item) = walk.next() {
                        match item {
                            Ok((key, meta)) => page.push(walk.store.describe(&key, &meta)),
                            Err(e) => return (None, Err(e)),
                        }
                        if page.len() == LIST_PAGE_OBJECTS {
                            return (Some(walk), Ok(page));
                        }
                    }
                    (None, Ok(page))
                })
                .await
                .expect("the walk does not panic");
                match page {
                    Ok(page) if page.is_empty() => None,
                    Ok(page) => Some((Ok(page), walk)),
                    Err(e) => Some((Err(io_err(&prefix, e)), None)),
                }
            }
        })
        .boxed()
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
    use futures::TryStreamExt;
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

    #[tokio::test]
    async fn the_listing_streams_in_byte_order_of_whole_keys_and_honours_the_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let names = ["a-b", "a/x", "a/y/z", "a.c", "a0", "B", "é/x", "ab/.hidden", "a/w.tmp", ".git/x", "b"];
        for n in names {
            let p = dir.path().join(n);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"x").unwrap();
        }
        let store = LocalStore::new(dir.path()).unwrap();
        let keys = |prefix: &str| {
            let store = store.clone();
            let prefix = prefix.to_string();
            async move { store.list(&prefix).await.unwrap().into_iter().map(|o| o.key).collect::<Vec<_>>() }
        };
        let mut want: Vec<&str> = vec!["B", "a-b", "a.c", "a/x", "a/y/z", "a0", "b", "é/x"];
        assert_eq!(keys("").await, want, "byte order: `-` and `.` before `/`, capitals first, é last");
        want.sort();
        assert_eq!(keys("").await, want);
        assert_eq!(keys("a").await, ["a-b", "a.c", "a/x", "a/y/z", "a0"]);
        assert_eq!(keys("a/").await, ["a/x", "a/y/z"]);
        assert_eq!(keys("a/y").await, ["a/y/z"]);
        assert_eq!(keys("nothing/").await, Vec::<String>::new());
        // More than a page: every file once, pages in order.
        for i in 0..(LIST_PAGE_OBJECTS + 5) {
            let p = dir.path().join(format!("many/{}/f{i:05}", i % 7));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"x").unwrap();
        }
        let pages: Vec<Vec<ObjectRef>> = store.list_pages("many/").try_collect().await.unwrap();
        assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [LIST_PAGE_OBJECTS, 5]);
        let listed: Vec<String> = pages.into_iter().flatten().map(|o| o.key).collect();
        let mut sorted = listed.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(listed, sorted);
    }
}

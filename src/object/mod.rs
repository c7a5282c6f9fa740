//! The object store boundary: where input files live.
//!
//! Owns listing, version resolution and streaming reads (with gzip and size limits).
//! Implementations: [`local::LocalStore`] (a folder; version = content hash, order = mtime),
//! [`s3::S3Store`] (version = VersionId or ETag, order = LastModified).
//!
//! Listings stream a page at a time in key order, the UTF-8 byte order S3 lists in, so
//! replay and reconcile hold a page, never the whole listing (see `docs/design.md`).

pub mod local;
pub mod s3;

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use async_compression::tokio::bufread::GzipDecoder;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use futures::TryStreamExt;
use tokio::io::{AsyncRead, BufReader, ReadBuf};

use crate::validate::{FileVerdict, RecordLimits};

/// An object as a notification or a listing names it; `version` may be unknown yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRef {
    pub key: String,
    pub version: Option<String>,
    /// Orders versions of one key (S3 sequencer, local mtime), normalised so that
    /// string order is version order.
    pub sequencer: Option<String>,
    pub size: Option<u64>,
    /// When the object was written (S3 eventTime, local mtime): the start of the lag clock.
    pub event_time: Option<DateTime<Utc>>,
}

/// An object whose version is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedObject {
    pub key: String,
    pub version: String,
    pub sequencer: String,
    pub size: u64,
    pub event_time: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The object (or that version) no longer exists: skip it and acknowledge.
    #[error("object {key} not found")]
    NotFound { key: String },
    /// The version changed while it was read (local files rewritten in place): read again.
    #[error("object {key} changed while it was read")]
    Changed { key: String },
    #[error("reading object {key}: {source}")]
    Io { key: String, source: std::io::Error },
}

/// A byte stream of one object plus what the store knows about its encoding.
pub struct ObjectStream {
    pub reader: Box<dyn AsyncRead + Send + Unpin>,
    pub content_encoding: Option<String>,
    /// Set once the reader reaches its end, by stores whose reads are not pinned to a version
    /// (local files): the version of the bytes actually read, to compare with the one resolved.
    pub read_version: Option<Arc<std::sync::OnceLock<String>>>,
}

#[async_trait::async_trait]
pub trait ObjectStore: Send + Sync {
    /// The store's identity in the ledger's `bucket` column.
    fn bucket(&self) -> &str;
    /// The objects whose keys start with `prefix`, with sequencer, size and time filled in,
    /// a page at a time in key order (byte order of the UTF-8 keys, as S3 lists). A page
    /// holds at most [`LIST_PAGE_OBJECTS`] objects; the stream holds a page or two.
    fn list_pages(&self, prefix: &str) -> BoxStream<'static, Result<Vec<ObjectRef>, StoreError>>;
    /// The whole listing collected, for small folders (`demo`, tests). Replay and reconcile
    /// stream [`ObjectStore::list_pages`] instead.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectRef>, StoreError> {
        let mut out = Vec::new();
        let mut pages = self.list_pages(prefix);
        while let Some(page) = pages.try_next().await? {
            out.extend(page);
        }
        Ok(out)
    }
    /// Fills in version, sequencer and size.
    async fn resolve(&self, obj: &ObjectRef) -> Result<ResolvedObject, StoreError>;
    /// True when resolving a version means reading the whole object (local files: a content
    /// hash); the pipeline then first tries the ledger by (key, sequencer, size).
    fn version_costs_a_read(&self) -> bool {
        false
    }
    /// Is the store reachable (for `/readyz`)?
    async fn ping(&self) -> Result<(), StoreError>;
    /// Streams the bytes of exactly `obj.version`.
    async fn open(&self, obj: &ResolvedObject) -> Result<ObjectStream, StoreError>;
}

/// The most objects one listing page holds (ListObjectsV2's own page size).
pub const LIST_PAGE_OBJECTS: usize = 1000;

/// Limits applied to every decoded stream.
#[derive(Debug, Clone, Copy)]
pub struct ReadLimits {
    /// Largest decoded (uncompressed) size of one file.
    pub max_file_bytes: u64,
    /// Largest decoded/compressed ratio of a gzip file (the bomb guard).
    pub max_gzip_ratio: u64,
    /// Per-record bounds, applied by the validator's record reader.
    pub record: RecordLimits,
}

impl Default for ReadLimits {
    fn default() -> Self {
        ReadLimits { max_file_bytes: 8 << 30, max_gzip_ratio: 1000, record: RecordLimits::default() }
    }
}

pub fn is_gzip(key: &str, content_encoding: Option<&str>) -> bool {
    key.ends_with(".gz") || content_encoding.is_some_and(|e| e.eq_ignore_ascii_case("gzip"))
}

/// Decodes (gzip by extension or Content-Encoding) and enforces the limits; counts raw bytes
/// into `raw_bytes` for metrics.
pub fn decoded(
    stream: ObjectStream,
    obj: &ResolvedObject,
    limits: ReadLimits,
    raw_bytes: Arc<AtomicU64>,
) -> Box<dyn AsyncRead + Send + Unpin> {
    let counted = Counting { inner: stream.reader, count: raw_bytes };
    if is_gzip(&obj.key, stream.content_encoding.as_deref()) {
        let cap = limits.max_file_bytes.min(obj.size.max(1).saturating_mul(limits.max_gzip_ratio));
        let mut decoder = GzipDecoder::new(BufReader::with_capacity(64 * 1024, counted));
        decoder.multiple_members(true);
        Box::new(Limited {
            inner: decoder,
            left: cap,
            passed: false,
            rule: "gzip_bomb",
            reason: format!(
                "gzip {} expands past {} bytes ({}× its compressed size or the file limit)",
                obj.key, cap, limits.max_gzip_ratio
            ),
        })
    } else {
        Box::new(Limited {
            inner: counted,
            left: limits.max_file_bytes,
            passed: false,
            rule: "too_large",
            reason: format!("{} is larger than {} bytes", obj.key, limits.max_file_bytes),
        })
    }
}

struct Counting<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

/// Marks an error of the underlying store stream, so a decoder error (a verdict on the file)
/// can be told apart from a broken connection (a reason to try again).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct StoreStreamError(std::io::Error);

impl<R: AsyncRead + Unpin> AsyncRead for Counting<R> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        match res {
            Poll::Ready(Err(e)) => Poll::Ready(Err(std::io::Error::new(e.kind(), StoreStreamError(e)))),
            other => other,
        }
    }
}

struct Limited<R> {
    inner: R,
    left: u64,
    /// The limit was passed: the bytes up to it were handed out, the next read is the verdict.
    passed: bool,
    rule: &'static str,
    reason: String,
}

impl<R: AsyncRead + Unpin> AsyncRead for Limited<R> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let verdict = |l: &Limited<R>| {
            Poll::Ready(Err(std::io::Error::other(FileVerdict { rule: l.rule, reason: l.reason.clone() })))
        };
        if self.passed {
            return verdict(&self);
        }
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &res {
            let n = (buf.filled().len() - before) as u64;
            if n > self.left {
                // The bytes up to the limit go out first, so the reader reaches the line where
                // the limit struck; the next read is the verdict, whatever the stream holds.
                buf.set_filled(before + self.left as usize);
                self.passed = true;
                if self.left == 0 {
                    return verdict(&self);
                }
                self.left = 0;
                return Poll::Ready(Ok(()));
            }
            self.left -= n;
        }
        if let Poll::Ready(Err(e)) = res {
            // The store's own errors are transient: hand them on as they were.
            if let Some(inner) = e.get_ref().and_then(|i| i.downcast_ref::<StoreStreamError>()) {
                return Poll::Ready(Err(std::io::Error::new(inner.0.kind(), inner.0.to_string())));
            }
            // Anything else comes from the decoder: the compressed data is corrupt.
            let err = FileVerdict { rule: "unreadable", reason: format!("corrupt compressed data: {e}") };
            return Poll::Ready(Err(std::io::Error::other(err)));
        }
        res
    }
}

/// Left-pads a sequencer so string order is version order (S3's rule for its hex sequencers).
pub fn normalise_sequencer(s: &str) -> String {
    format!("{:0>32}", s.to_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn obj(key: &str, size: u64) -> ResolvedObject {
        ResolvedObject { key: key.into(), version: "v".into(), sequencer: "1".into(), size, event_time: Utc::now() }
    }

    async fn read_all(r: &mut (dyn AsyncRead + Send + Unpin)) -> std::io::Result<Vec<u8>> {
        let mut v = Vec::new();
        r.read_to_end(&mut v).await.map(|_| v)
    }

    fn gz(data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[tokio::test]
    async fn gzip_by_extension_or_encoding() {
        let plain = b"a,b\n1,2\n".repeat(10);
        let z = gz(&plain);
        for (key, enc) in [("f.csv.gz", None), ("f.csv", Some("gzip".to_string()))] {
            let count = Arc::new(AtomicU64::new(0));
            let s = ObjectStream {
                reader: Box::new(std::io::Cursor::new(z.clone())),
                content_encoding: enc,
                read_version: None,
            };
            let mut r = decoded(s, &obj(key, z.len() as u64), ReadLimits::default(), count.clone());
            assert_eq!(read_all(&mut r).await.unwrap(), plain);
            assert_eq!(count.load(Ordering::Relaxed), z.len() as u64);
        }
    }

    #[tokio::test]
    async fn the_bytes_up_to_the_limit_come_first_then_the_verdict_even_at_the_end() {
        // 10 bytes over a limit of 6, all in one read: 6 bytes, then the verdict (not EOF).
        let s = ObjectStream {
            reader: Box::new(std::io::Cursor::new(b"header\nrow".to_vec())),
            content_encoding: None,
            read_version: None,
        };
        let limits = ReadLimits { max_file_bytes: 6, ..Default::default() };
        let mut r = decoded(s, &obj("f.csv", 10), limits, Arc::default());
        let mut got = Vec::new();
        let err = loop {
            let mut chunk = [0u8; 64];
            match r.read(&mut chunk).await {
                Ok(0) => panic!("the stream ended without the verdict after {got:?}"),
                Ok(n) => got.extend_from_slice(&chunk[..n]),
                Err(e) => break e,
            }
        };
        assert_eq!(got, b"header");
        assert_eq!(err.get_ref().unwrap().downcast_ref::<FileVerdict>().unwrap().rule, "too_large");
        assert!(r.read(&mut [0u8; 8]).await.is_err(), "and stays the verdict");
    }

    #[tokio::test]
    async fn gzip_bomb_is_a_size_limit() {
        let plain = vec![b'a'; 1 << 20];
        let z = gz(&plain);
        let s = ObjectStream {
            reader: Box::new(std::io::Cursor::new(z.clone())),
            content_encoding: None,
            read_version: None,
        };
        let limits = ReadLimits { max_file_bytes: 1 << 30, max_gzip_ratio: 10, ..Default::default() };
        let mut r = decoded(s, &obj("bomb.gz", z.len() as u64), limits, Arc::default());
        let err = read_all(&mut r).await.unwrap_err();
        let inner = err.get_ref().unwrap().downcast_ref::<FileVerdict>().unwrap();
        assert_eq!(inner.rule, "gzip_bomb");
    }

    #[tokio::test]
    async fn corrupt_gzip_is_a_verdict_but_a_broken_store_stream_is_not() {
        let bad = b"\x1f\x8b\x08\x00this is not deflate data".to_vec();
        let s =
            ObjectStream { reader: Box::new(std::io::Cursor::new(bad)), content_encoding: None, read_version: None };
        let err =
            read_all(&mut decoded(s, &obj("f.csv.gz", 30), ReadLimits::default(), Arc::default())).await.unwrap_err();
        assert_eq!(err.get_ref().unwrap().downcast_ref::<FileVerdict>().unwrap().rule, "unreadable");

        struct Broken;
        impl AsyncRead for Broken {
            fn poll_read(self: Pin<&mut Self>, _: &mut Context<'_>, _: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
                Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer")))
            }
        }
        for key in ["f.csv.gz", "f.csv"] {
            let s = ObjectStream { reader: Box::new(Broken), content_encoding: None, read_version: None };
            let err =
                read_all(&mut decoded(s, &obj(key, 30), ReadLimits::default(), Arc::default())).await.unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{key}");
            assert!(err.get_ref().and_then(|i| i.downcast_ref::<FileVerdict>()).is_none());
        }
    }

    #[tokio::test]
    async fn plain_file_size_limit() {
        let s = ObjectStream {
            reader: Box::new(std::io::Cursor::new(vec![b'x'; 100])),
            content_encoding: None,
            read_version: None,
        };
        let limits = ReadLimits { max_file_bytes: 99, max_gzip_ratio: 10, ..Default::default() };
        let err = read_all(&mut decoded(s, &obj("f.csv", 100), limits, Arc::default())).await.unwrap_err();
        assert_eq!(err.get_ref().unwrap().downcast_ref::<FileVerdict>().unwrap().rule, "too_large");
    }

    #[test]
    fn sequencers_order_as_strings_after_padding() {
        assert!(normalise_sequencer("0055AED6DCD90281E5") > normalise_sequencer("55AED6DCD90281E4"));
        assert!(normalise_sequencer("A") > normalise_sequencer("9"));
        assert!(normalise_sequencer("10") > normalise_sequencer("F"));
    }
}

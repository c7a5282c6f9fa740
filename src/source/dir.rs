//! A watched local folder as the notification source (the embedded default).
//!
//! Scans the folder every `poll_interval`; a file is delivered when it is new or its
//! (mtime, size) changed, once it has been still for `settle`. Nothing is moved or deleted:
//! after a restart every file is delivered again and the ledger turns the loaded ones into
//! duplicates. A released delivery is forgotten so the next scan delivers it again.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::{Ack, Delivery, Source, SourceError};
use crate::object::local::LocalStore;
use crate::object::ObjectRef;

type Seen = Arc<Mutex<HashMap<String, (String, u64)>>>;

pub struct DirSource {
    store: LocalStore,
    poll_interval: Duration,
    settle: Duration,
    seen: Seen,
    queue: VecDeque<ObjectRef>,
}

impl DirSource {
    pub fn new(store: LocalStore, poll_interval: Duration, settle: Duration) -> DirSource {
        DirSource { store, poll_interval, settle, seen: Seen::default(), queue: VecDeque::new() }
    }

    /// Queues every new or changed file that has settled. Returns how many were queued.
    fn scan(&mut self) -> Result<usize, SourceError> {
        let entries = self
            .store
            .walk(self.store.root())
            .map_err(|e| SourceError::Io(format!("scanning {}: {e}", self.store.root().display())))?;
        let now = SystemTime::now();
        let mut seen = self.seen.lock().expect("seen lock");
        let mut queued = 0;
        for (key, meta) in entries {
            let obj = self.store.describe(&key, &meta);
            let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            if now.duration_since(modified).unwrap_or_default() < self.settle {
                continue;
            }
            let stamp = (obj.sequencer.clone().unwrap_or_default(), meta.len());
            if seen.get(&key) == Some(&stamp) {
                continue;
            }
            seen.insert(key, stamp);
            self.queue.push_back(obj);
            queued += 1;
        }
        Ok(queued)
    }
}

struct DirAck {
    key: String,
    seen: Seen,
}

#[async_trait::async_trait]
impl Ack for DirAck {
    async fn ack(self: Box<Self>) {}
    async fn release(self: Box<Self>) {
        self.seen.lock().expect("seen lock").remove(&self.key);
    }
}

#[async_trait::async_trait]
impl Source for DirSource {
    async fn next(&mut self) -> Result<Delivery, SourceError> {
        loop {
            if let Some(obj) = self.queue.pop_front() {
                let ack = Box::new(DirAck { key: obj.key.clone(), seen: self.seen.clone() });
                return Ok(Delivery { objects: vec![obj], ack });
            }
            if self.scan()? == 0 {
                tokio::time::sleep(self.poll_interval).await;
            }
        }
    }

    async fn ready(&self) -> bool {
        self.store.root().is_dir()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn delivers_new_and_changed_files_once_and_released_ones_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path()).unwrap();
        let mut src = DirSource::new(store, Duration::from_millis(5), Duration::ZERO);
        std::fs::write(dir.path().join("a.csv"), "1").unwrap();
        std::fs::write(dir.path().join("b.csv.tmp"), "1").unwrap();
        let d = src.next().await.unwrap();
        assert_eq!(d.objects[0].key, "a.csv");
        // Unchanged: not delivered again.
        assert_eq!(src.scan().unwrap(), 0);
        // Released: delivered again.
        d.ack.release().await;
        assert_eq!(src.next().await.unwrap().objects[0].key, "a.csv");
        // Rewritten (size changes): delivered again.
        std::fs::write(dir.path().join("a.csv"), "22").unwrap();
        assert_eq!(src.next().await.unwrap().objects[0].key, "a.csv");
    }

    #[tokio::test]
    async fn unsettled_files_wait() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path()).unwrap();
        let mut src = DirSource::new(store, Duration::from_millis(5), Duration::from_secs(3600));
        std::fs::write(dir.path().join("a.csv"), "1").unwrap();
        assert_eq!(src.scan().unwrap(), 0);
    }
}

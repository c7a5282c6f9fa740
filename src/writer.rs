//! The single writer: a dedicated thread that owns the warehouse [`BatchSink`].
//!
//! Async code talks to it through [`WriterHandle`]; row chunks flow through a bounded channel,
//! so a slow warehouse slows the reader instead of growing memory. Blocking database work
//! never runs on the async runtime.

use tokio::sync::{mpsc, oneshot};

use crate::validate::{Reject, RowChunk};
use crate::warehouse::{Admission, BatchReport, BatchSink, FileMeta, FileSummary, PendingCommit, WarehouseError};

/// Chunks in flight between the reader and the writer (each at most `CHUNK_ROWS` rows).
const CHANNEL_CHUNKS: usize = 4;

enum Cmd {
    Prepare { files: Vec<FileMeta>, reply: oneshot::Sender<Result<(), WarehouseError>> },
    Admit { file: FileMeta, force: bool, reply: oneshot::Sender<Result<Admission, WarehouseError>> },
    Rows(RowChunk),
    Rejects(Vec<Reject>),
    Discard,
    Finish { summary: FileSummary, reply: oneshot::Sender<Result<bool, WarehouseError>> },
    Abandon { reply: oneshot::Sender<Result<(), WarehouseError>> },
    Pending { reply: oneshot::Sender<(u64, u64)> },
    Commit { reply: oneshot::Sender<Result<Option<BatchReport>, WarehouseError>> },
    CommitBegin { reply: oneshot::Sender<Result<Option<Box<dyn PendingCommit>>, WarehouseError>> },
    Rollback { reply: oneshot::Sender<()> },
}

#[derive(Clone)]
pub struct WriterHandle {
    tx: mpsc::Sender<Cmd>,
}

fn gone() -> WarehouseError {
    WarehouseError::Other("the writer thread stopped".into())
}

impl WriterHandle {
    /// Starts the writer thread; it stops when every handle is dropped.
    pub fn spawn(mut sink: Box<dyn BatchSink>) -> WriterHandle {
        let (tx, mut rx) = mpsc::channel::<Cmd>(CHANNEL_CHUNKS);
        std::thread::Builder::new()
            .name("wau-writer".into())
            .spawn(move || {
                // The first failed row write poisons the open file; `Finish` reports it.
                let mut failed: Option<WarehouseError> = None;
                while let Some(cmd) = rx.blocking_recv() {
                    match cmd {
                        Cmd::Prepare { files, reply } => {
                            let _ = reply.send(sink.prepare(&files));
                        }
                        Cmd::Admit { file, force, reply } => {
                            failed = None;
                            let _ = reply.send(sink.admit(&file, force));
                        }
                        Cmd::Rows(chunk) => {
                            if failed.is_none() {
                                failed = sink.write_rows(&chunk).err();
                            }
                        }
                        Cmd::Rejects(r) => {
                            if failed.is_none() {
                                failed = sink.write_rejects(&r).err();
                            }
                        }
                        Cmd::Discard => {
                            if failed.is_none() {
                                failed = sink.discard_file_rows().err();
                            }
                        }
                        Cmd::Finish { summary, reply } => {
                            let res = match failed.take() {
                                Some(e) => Err(e),
                                None => sink.finish_file(&summary),
                            };
                            let _ = reply.send(res);
                        }
                        Cmd::Abandon { reply } => {
                            failed = None;
                            let _ = reply.send(sink.abandon_file());
                        }
                        Cmd::Pending { reply } => {
                            let _ = reply.send(sink.pending());
                        }
                        Cmd::Commit { reply } => {
                            let _ = reply.send(sink.commit());
                        }
                        Cmd::CommitBegin { reply } => {
                            let _ = reply.send(sink.commit_begin());
                        }
                        Cmd::Rollback { reply } => {
                            failed = None;
                            sink.rollback();
                            let _ = reply.send(());
                        }
                    }
                }
                sink.rollback();
            })
            .expect("spawning the writer thread");
        WriterHandle { tx }
    }

    /// False once the writer thread has stopped (it only stops on a panic or when every
    /// handle is gone).
    pub fn is_alive(&self) -> bool {
        !self.tx.is_closed()
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Cmd) -> Result<T, WarehouseError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())
    }

    /// See [`BatchSink::prepare`].
    pub async fn prepare(&self, files: Vec<FileMeta>) -> Result<(), WarehouseError> {
        self.ask(|reply| Cmd::Prepare { files, reply }).await?
    }
    pub async fn admit(&self, file: FileMeta, force: bool) -> Result<Admission, WarehouseError> {
        self.ask(|reply| Cmd::Admit { file, force, reply }).await?
    }
    pub async fn rows(&self, chunk: RowChunk) -> Result<(), WarehouseError> {
        self.tx.send(Cmd::Rows(chunk)).await.map_err(|_| gone())
    }
    pub async fn rejects(&self, rejects: Vec<Reject>) -> Result<(), WarehouseError> {
        self.tx.send(Cmd::Rejects(rejects)).await.map_err(|_| gone())
    }
    pub async fn discard(&self) -> Result<(), WarehouseError> {
        self.tx.send(Cmd::Discard).await.map_err(|_| gone())
    }
    pub async fn finish(&self, summary: FileSummary) -> Result<bool, WarehouseError> {
        self.ask(|reply| Cmd::Finish { summary, reply }).await?
    }
    pub async fn abandon(&self) -> Result<(), WarehouseError> {
        self.ask(|reply| Cmd::Abandon { reply }).await?
    }
    pub async fn pending(&self) -> Result<(u64, u64), WarehouseError> {
        self.ask(|reply| Cmd::Pending { reply }).await
    }
    pub async fn commit(&self) -> Result<Option<BatchReport>, WarehouseError> {
        self.ask(|reply| Cmd::Commit { reply }).await?
    }
    /// Begins the commit of the open batch; a new batch opens meanwhile (see [`BatchSink::commit_begin`]).
    pub async fn commit_begin(&self) -> Result<Option<Box<dyn PendingCommit>>, WarehouseError> {
        self.ask(|reply| Cmd::CommitBegin { reply }).await?
    }
    pub async fn rollback(&self) -> Result<(), WarehouseError> {
        self.ask(|reply| Cmd::Rollback { reply }).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::warehouse::FileStatus;

    /// A sink that fails loudly on rows: the writer's reaction to a bug in a sink.
    struct PanicsOnRows;

    impl BatchSink for PanicsOnRows {
        fn admit(&mut self, _: &FileMeta, _: bool) -> Result<Admission, WarehouseError> {
            Ok(Admission::Load)
        }
        fn write_rows(&mut self, _: &RowChunk) -> Result<(), WarehouseError> {
            panic!("sink bug")
        }
        fn write_rejects(&mut self, _: &[Reject]) -> Result<(), WarehouseError> {
            Ok(())
        }
        fn discard_file_rows(&mut self) -> Result<(), WarehouseError> {
            Ok(())
        }
        fn finish_file(&mut self, _: &FileSummary) -> Result<bool, WarehouseError> {
            Ok(true)
        }
        fn abandon_file(&mut self) -> Result<(), WarehouseError> {
            Ok(())
        }
        fn pending(&self) -> (u64, u64) {
            (0, 0)
        }
        fn commit(&mut self) -> Result<Option<BatchReport>, WarehouseError> {
            Ok(None)
        }
        fn rollback(&mut self) {}
    }

    #[tokio::test]
    async fn a_panicking_sink_stops_the_writer_and_every_call_says_so() {
        let w = WriterHandle::spawn(Box::new(PanicsOnRows));
        let meta = FileMeta {
            bucket: "b".into(),
            key: "k".into(),
            version: "v".into(),
            sequencer: "1".into(),
            size: 1,
            event_time: chrono::Utc::now(),
            contract_version: 1,
            customer: None,
        };
        assert_eq!(w.admit(meta, false).await.unwrap(), Admission::Load);
        assert!(w.is_alive());
        let _ = w.rows(RowChunk::new(8)).await;
        let summary = FileSummary {
            status: FileStatus::Loaded,
            rows_read: 0,
            rows_loaded: 0,
            rows_rejected: 0,
            reason: None,
            customer: None,
        };
        let err = w.finish(summary).await.unwrap_err();
        assert!(err.to_string().contains("writer thread stopped"), "{err}");
        assert!(!w.is_alive());
        assert!(w.commit().await.is_err(), "nothing can be committed through a dead writer");
    }
}

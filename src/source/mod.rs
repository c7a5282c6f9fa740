//! The notification source boundary: what tells the pipeline that a file arrived.
//!
//! A [`Delivery`] names one or more objects and carries an [`Ack`]. The pipeline calls
//! `ack` only after every object it names is committed (or recorded as rejected, duplicate,
//! superseded or skipped), and `release` when it gives the delivery back for another try.
//! Implementations: [`dir::DirSource`] (a watched folder), [`sqs::SqsSource`] (S3 notifications on SQS).

pub mod dir;
pub mod sqs;

use crate::object::ObjectRef;

#[async_trait::async_trait]
pub trait Ack: Send + Sync {
    /// Everything the delivery names is committed: it must never come back.
    async fn ack(self: Box<Self>);
    /// Give the delivery back now, to be tried again.
    async fn release(self: Box<Self>);
}

pub struct Delivery {
    pub objects: Vec<ObjectRef>,
    pub ack: Box<dyn Ack>,
}

/// For objects that come from a listing (replay, reconcile): nothing to acknowledge.
pub struct NoAck;

#[async_trait::async_trait]
impl Ack for NoAck {
    async fn ack(self: Box<Self>) {}
    async fn release(self: Box<Self>) {}
}

#[async_trait::async_trait]
pub trait Source: Send {
    /// The next delivery; waits until there is one. Must be cancel-safe: dropping the future
    /// loses nothing.
    async fn next(&mut self) -> Result<Delivery, SourceError>;
    /// Is the source reachable (for `/readyz`)?
    async fn ready(&self) -> bool;
    /// Shutdown, after the last commit's acknowledgements: give back what was received but
    /// not handed out, and finish pending acknowledgements.
    async fn close(&mut self) {}
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("source: {0}")]
    Io(String),
}

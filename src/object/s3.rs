//! S3 as the object store (the production path).
//!
//! - The bucket may be a name, an access point alias or an access point ARN; the ledger's
//!   `bucket` column holds it as configured (`s3://…`), so keep it stable.
//! - Version: the `VersionId` on a versioned bucket, else `etag:<ETag>`. Reads are pinned to it
//!   (`versionId=`, or `If-Match: <ETag>`), so the bytes loaded are the bytes resolved; an
//!   object overwritten in between is [`StoreError::Changed`] and is resolved again.
//! - Sequencer: `LastModified` in whole seconds, zero-padded. Events carry S3's hex
//!   sequencer but listings do not, and the ledger orders the versions of a key by one
//!   string, so both paths use the time both have. HeadObject reports it to the second, so
//!   two writes of one key within the same second are not ordered (both load; the merge keeps
//!   one winner per row key either way).
//! - Reads stream: the body is handed on as it arrives, never held whole in memory.

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use futures::StreamExt;

use super::{normalise_sequencer, ObjectRef, ObjectStore, ObjectStream, ResolvedObject, StoreError};
use crate::aws::status_of;

const ETAG_PREFIX: &str = "etag:";

#[derive(Clone)]
pub struct S3Store {
    client: Client,
    /// Name, alias or access point ARN, as the API takes it.
    target: String,
    /// `s3://<bucket>`: the ledger identity.
    id: String,
}

impl S3Store {
    pub fn new(client: Client, bucket: &str) -> S3Store {
        S3Store { client, target: bucket.to_string(), id: format!("s3://{bucket}") }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn bucket_name(&self) -> &str {
        &self.target
    }

    /// Uploads a local file (a streaming body: the file is not read into memory).
    pub async fn put_file(
        &self,
        key: &str,
        path: &std::path::Path,
        content_encoding: Option<&str>,
    ) -> Result<(), StoreError> {
        let body = ByteStream::from_path(path).await.map_err(|e| io(key, std::io::Error::other(e)))?;
        self.client
            .put_object()
            .bucket(&self.target)
            .key(key)
            .body(body)
            .content_type("text/csv")
            .set_content_encoding(content_encoding.map(str::to_string))
            .send()
            .await
            .map_err(|e| io(key, std::io::Error::other(aws_sdk_s3::error::DisplayErrorContext(e).to_string())))?;
        Ok(())
    }
}

/// `LastModified` in seconds as an ordering string.
pub fn time_sequencer(t: DateTime<Utc>) -> String {
    normalise_sequencer(&t.timestamp().max(0).to_string())
}

fn to_chrono(t: &aws_sdk_s3::primitives::DateTime) -> DateTime<Utc> {
    DateTime::from_timestamp(t.secs(), t.subsec_nanos()).unwrap_or_default()
}

fn io(key: &str, e: std::io::Error) -> StoreError {
    StoreError::Io { key: key.to_string(), source: e }
}

fn sdk_err<E: std::error::Error + Send + Sync + 'static>(
    key: &str,
    e: aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> StoreError {
    match status_of(&e) {
        Some(404) => StoreError::NotFound { key: key.to_string() },
        Some(412) => StoreError::Changed { key: key.to_string() },
        _ => io(key, std::io::Error::other(aws_sdk_s3::error::DisplayErrorContext(e).to_string())),
    }
}

/// A listed object, or `None` for a "folder" placeholder.
fn listed(o: &aws_sdk_s3::types::Object) -> Option<ObjectRef> {
    let key = o.key().filter(|k| !k.ends_with('/'))?;
    let time = o.last_modified().map(to_chrono);
    Some(ObjectRef {
        key: key.to_string(),
        version: None,
        sequencer: time.map(time_sequencer),
        size: o.size().map(|s| s.max(0) as u64),
        event_time: time,
    })
}

fn version_of(version_id: Option<&str>, etag: Option<&str>) -> Option<String> {
    match version_id {
        Some(v) if !v.is_empty() && v != "null" => Some(v.to_string()),
        _ => etag.map(|e| format!("{ETAG_PREFIX}{}", e.trim_matches('"'))),
    }
}

#[async_trait::async_trait]
impl ObjectStore for S3Store {
    fn bucket(&self) -> &str {
        &self.id
    }

    /// ListObjectsV2 pages as they arrive: S3 lists a general purpose bucket in UTF-8 binary
    /// key order, so the pages are in key order as they come, and none is held after it is read.
    fn list_pages(&self, prefix: &str) -> BoxStream<'static, Result<Vec<ObjectRef>, StoreError>> {
        let pages = self.client.list_objects_v2().bucket(&self.target).prefix(prefix).into_paginator().send();
        let prefix = prefix.to_string();
        futures::stream::unfold(Some(pages), move |pages| {
            let prefix = prefix.clone();
            async move {
                let mut pages = pages?;
                match pages.next().await? {
                    Ok(page) => Some((Ok(page.contents().iter().filter_map(listed).collect()), Some(pages))),
                    Err(e) => Some((Err(sdk_err(&prefix, e)), None)),
                }
            }
        })
        .boxed()
    }

    async fn resolve(&self, obj: &ObjectRef) -> Result<ResolvedObject, StoreError> {
        let head = self
            .client
            .head_object()
            .bucket(&self.target)
            .key(&obj.key)
            .set_version_id(obj.version.clone())
            .send()
            .await
            .map_err(|e| sdk_err(&obj.key, e))?;
        if head.delete_marker() == Some(true) {
            return Err(StoreError::NotFound { key: obj.key.clone() });
        }
        let version = version_of(head.version_id(), head.e_tag()).ok_or_else(|| {
            io(&obj.key, std::io::Error::other("HeadObject returned neither a VersionId nor an ETag"))
        })?;
        let time = head.last_modified().map(to_chrono).or(obj.event_time).unwrap_or_else(Utc::now);
        Ok(ResolvedObject {
            key: obj.key.clone(),
            version,
            sequencer: time_sequencer(time),
            size: head.content_length().map(|s| s.max(0) as u64).or(obj.size).unwrap_or(0),
            event_time: time,
        })
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.client.list_objects_v2().bucket(&self.target).max_keys(1).send().await.map_err(|e| sdk_err("", e))?;
        Ok(())
    }

    async fn open(&self, obj: &ResolvedObject) -> Result<ObjectStream, StoreError> {
        let req = self.client.get_object().bucket(&self.target).key(&obj.key);
        let req = match obj.version.strip_prefix(ETAG_PREFIX) {
            Some(etag) => req.if_match(format!("\"{etag}\"")),
            None => req.version_id(&obj.version),
        };
        let resp = req.send().await.map_err(|e| sdk_err(&obj.key, e))?;
        Ok(ObjectStream {
            content_encoding: resp.content_encoding().map(str::to_string),
            reader: Box::new(resp.body.into_async_read()),
            read_version: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_prefer_the_version_id_and_fall_back_to_the_etag() {
        assert_eq!(version_of(Some("3HL4kqtJlcpXroDTDmJ"), Some("\"abc\"")).unwrap(), "3HL4kqtJlcpXroDTDmJ");
        assert_eq!(version_of(Some("null"), Some("\"abc\"")).unwrap(), "etag:abc");
        assert_eq!(version_of(None, Some("\"d41d8-2\"")).unwrap(), "etag:d41d8-2");
        assert_eq!(version_of(None, None), None);
    }

    #[test]
    fn time_sequencers_order_as_strings() {
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        assert!(time_sequencer(t("2026-11-29T10:00:01Z")) > time_sequencer(t("2026-11-29T10:00:00.900Z")));
        assert_eq!(time_sequencer(t("2026-11-29T10:00:00.900Z")), time_sequencer(t("2026-11-29T10:00:00Z")));
        assert!(time_sequencer(t("2033-05-18T03:33:20Z")) > time_sequencer(t("2001-09-09T01:46:40Z")));
    }
}

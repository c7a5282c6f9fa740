//! Parsing of SQS message bodies that announce S3 objects.
//!
//! Owns the wire formats that can arrive on the queue and turns one body into a typed
//! [`Notification`] or an [`EventError`]:
//!
//! - an S3 event notification (`{"Records":[…]}`, eventVersion 2.x), as S3 sends it straight
//!   to SQS;
//! - the same inside an SNS envelope (`{"Type":"Notification","Message":"<json string>"}`),
//!   unwrapped first (no envelope when the subscription uses raw message delivery);
//! - an EventBridge S3 event (`{"source":"aws.s3","detail-type":"Object Created",…}`);
//! - the `s3:TestEvent` S3 sends when a notification is configured.
//!
//! Every record of a multi-record message is returned, and keys come back decoded (see
//! [`decode_key`]). Only creations become [`S3ObjectEvent`]s; other S3 events (removals,
//! restores, tagging…) are counted as ignored. Anything this module cannot read fully is an
//! error, never a partial result: the caller leaves such a message for the DLQ rather than
//! deleting it and losing an object.
//!
//! It must not touch the queue, the object store or the ledger: it only reads text.
//!
//! The shape is picked from the fields that tell the formats apart (`Records`, `detail-type`,
//! `Event`, `Type`) rather than with a `#[serde(untagged)]` enum, because an untagged enum
//! reports only "data did not match any variant" and hides which field was wrong. Each part is
//! then read into a serde struct and errors carry the part's path (`s3.object: missing field
//! \`key\``).

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

/// One object an event says was created. Fields are as the event gives them; `key` is decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3ObjectEvent {
    pub bucket: String,
    /// The real object key (S3 notification keys are form-URL-decoded).
    pub key: String,
    /// `None` for an unversioned bucket.
    pub version_id: Option<String>,
    pub etag: Option<String>,
    /// As received: hex, ordering events for this key only once left-padded to equal length.
    /// Missing from moto's events and from some event types.
    pub sequencer: Option<String>,
    pub size: Option<u64>,
    /// When S3 finished the request; a time without a zone is taken as UTC (moto sends those).
    pub event_time: Option<DateTime<Utc>>,
    /// S3's `eventName` (`ObjectCreated:Put`, `ObjectCreated:CompleteMultipartUpload`); for
    /// EventBridge, `detail-type:reason` (`Object Created:PutObject`).
    pub event_name: String,
}

/// What one SQS message body announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notification {
    /// Objects created, in message order, and how many records were about something else
    /// (removals, restores, …) and so were skipped.
    Objects { created: Vec<S3ObjectEvent>, ignored: usize },
    /// `s3:TestEvent`, sent when a bucket notification is configured: acknowledge and count.
    TestEvent,
}

/// Why a body could not be read. Every variant means "leave the message for the DLQ": none
/// is safe to delete, since the body may name an object that would then never be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// The body (or an SNS envelope's `Message`) is not JSON.
    #[error("message body is not json: {0}")]
    NotJson(String),
    /// JSON, but none of the formats this module reads, or one of them from the wrong source.
    #[error("message body is not an s3 notification: {0}")]
    UnknownShape(String),
    /// A recognised format whose record `index` (0 for EventBridge) lacks a field, has one of
    /// the wrong type, or holds an undecodable key; `reason` names the field and the bucket.
    #[error("record {index} of the s3 notification is unreadable: {reason}")]
    BadRecord { index: usize, reason: String },
    /// From [`decode_key`]; [`parse_body`] reports it inside [`EventError::BadRecord`].
    #[error("object key {key:?} cannot be decoded: {reason}")]
    BadKey { key: String, reason: String },
}

/// Parses one SQS message body. See the module docs for the formats read.
pub fn parse_body(body: &str) -> Result<Notification, EventError> {
    let value: Value = serde_json::from_str(body).map_err(|e| EventError::NotJson(e.to_string()))?;
    parse_value(&value, false)
}

/// Decodes an S3 notification key: `+` becomes a space first, then `%XX` escapes are decoded
/// (so `%2B` is a real `+` and `%2F` a `/`, which moto escapes and S3 does not), and the bytes
/// must form UTF-8 (`%C3%A9` is `é`). A `%` not followed by two hex digits is an error.
pub fn decode_key(raw: &str) -> Result<String, EventError> {
    let bad = |reason: String| EventError::BadKey { key: raw.to_string(), reason };
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            // One pass is the same as "all `+` to space, then percent-decode": a `+` produced
            // by `%2B` is never looked at again.
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => {
                let byte = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| Some(hex_digit(h[0])? << 4 | hex_digit(h[1])?))
                    .ok_or_else(|| bad(format!("invalid percent escape at byte {i}")))?;
                out.push(byte);
                i += 3;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| bad("decoded bytes are not utf-8".to_string()))
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn parse_value(value: &Value, inside_sns: bool) -> Result<Notification, EventError> {
    let unknown = |what: String| Err(EventError::UnknownShape(what));
    let Some(object) = value.as_object() else {
        return unknown(format!("expected a json object, found {}", json_kind(value)));
    };
    if let Some(records) = object.get("Records") {
        return parse_records(records);
    }
    if object.contains_key("detail-type") {
        return parse_eventbridge(value);
    }
    if object.contains_key("Event") {
        return parse_test_event(value);
    }
    if object.contains_key("Type") && object.contains_key("Message") {
        if inside_sns {
            return unknown("an sns envelope inside an sns envelope".to_string());
        }
        return parse_sns(value);
    }
    let mut keys: Vec<&str> = object.keys().map(String::as_str).take(10).collect();
    if object.len() > keys.len() {
        keys.push("…");
    }
    unknown(format!(
        "a json object with keys [{}] is none of: s3 event (Records), s3:TestEvent, sns envelope, eventbridge event",
        keys.join(", ")
    ))
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Deserializes the part of `value` at the dotted `path` ("" for `value` itself), with the
/// path in the error.
fn part<T: DeserializeOwned>(value: &Value, path: &str) -> Result<T, String> {
    let mut at = value;
    for segment in path.split('.').filter(|s| !s.is_empty()) {
        at = at.get(segment).ok_or_else(|| format!("{path} is missing"))?;
    }
    T::deserialize(at).map_err(|e| if path.is_empty() { e.to_string() } else { format!("{path}: {e}") })
}

/// Accepts RFC 3339 with any offset, or a zone-less ISO time taken as UTC.
fn parse_time(raw: &str, field: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(raw) {
        return Ok(t.with_timezone(&Utc));
    }
    NaiveDateTime::parse_from_str(raw, "%Y-%m-%dT%H:%M:%S%.f")
        .map(|t| t.and_utc())
        .map_err(|_| format!("{field} {raw:?} is not an iso-8601 time"))
}

// ---- S3 event notification -------------------------------------------------------------

#[derive(Deserialize)]
#[serde(expecting = "a json object")]
#[serde(rename_all = "camelCase")]
struct WireRecordHead {
    event_version: Option<String>,
    event_source: Option<String>,
    event_time: Option<String>,
    event_name: String,
}

#[derive(Deserialize)]
#[serde(expecting = "a json object")]
struct WireBucket {
    name: String,
}

#[derive(Deserialize)]
#[serde(expecting = "a json object")]
#[serde(rename_all = "camelCase")]
struct WireS3Object {
    key: String,
    size: Option<u64>,
    #[serde(rename = "eTag")]
    e_tag: Option<String>,
    version_id: Option<String>,
    sequencer: Option<String>,
}

fn parse_records(records: &Value) -> Result<Notification, EventError> {
    let Some(records) = records.as_array() else {
        return Err(EventError::UnknownShape(format!("Records is {}, not an array", json_kind(records))));
    };
    if records.is_empty() {
        return Err(EventError::UnknownShape("Records is empty".to_string()));
    }
    let mut created = Vec::with_capacity(records.len());
    let mut ignored = 0;
    for (index, record) in records.iter().enumerate() {
        let bad = |reason: String| EventError::BadRecord { index, reason };
        let head: WireRecordHead = part(record, "").map_err(bad)?;
        if let Some(version) = &head.event_version {
            // Same major version: the fields we read are stable across 2.x minors.
            if version.split('.').next() != Some("2") {
                return Err(bad(format!("eventVersion {version:?} is not 2.x")));
            }
        }
        if let Some(source) = head.event_source.as_deref().filter(|s| *s != "aws:s3") {
            return Err(bad(format!("eventSource {source:?} is not aws:s3")));
        }
        // Other events (ObjectRemoved:*, ObjectRestore:*, …) are not ours to read in full.
        if !head.event_name.starts_with("ObjectCreated:") {
            ignored += 1;
            continue;
        }
        let bucket: WireBucket = part(record, "s3.bucket").map_err(bad)?;
        let object: WireS3Object = part(record, "s3.object").map_err(bad)?;
        if object.key.is_empty() {
            return Err(bad(format!("s3.object.key is empty (bucket {})", bucket.name)));
        }
        let key = decode_key(&object.key).map_err(|e| bad(format!("in bucket {}: {e}", bucket.name)))?;
        let event_time = head.event_time.as_deref().map(|t| parse_time(t, "eventTime")).transpose().map_err(bad)?;
        created.push(S3ObjectEvent {
            bucket: bucket.name,
            key,
            version_id: object.version_id,
            etag: object.e_tag,
            sequencer: object.sequencer,
            size: object.size,
            event_time,
            event_name: head.event_name,
        });
    }
    Ok(Notification::Objects { created, ignored })
}

// ---- s3:TestEvent ----------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(expecting = "a json object")]
struct WireTestEvent {
    #[serde(rename = "Event")]
    event: String,
}

fn parse_test_event(value: &Value) -> Result<Notification, EventError> {
    let test: WireTestEvent = part(value, "").map_err(|e| EventError::UnknownShape(format!("Event field: {e}")))?;
    if test.event != "s3:TestEvent" {
        return Err(EventError::UnknownShape(format!("Event {:?} is not s3:TestEvent", test.event)));
    }
    Ok(Notification::TestEvent)
}

// ---- SNS envelope ----------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(expecting = "a json object")]
struct WireSnsEnvelope {
    #[serde(rename = "Type")]
    kind: String,
    #[serde(rename = "Message")]
    message: String,
}

fn parse_sns(value: &Value) -> Result<Notification, EventError> {
    let sns: WireSnsEnvelope = part(value, "").map_err(|e| EventError::UnknownShape(format!("sns envelope: {e}")))?;
    if sns.kind != "Notification" {
        // A SubscriptionConfirmation means the subscription is not confirmed: someone must look.
        return Err(EventError::UnknownShape(format!("sns message of Type {:?}, not Notification", sns.kind)));
    }
    let inner: Value =
        serde_json::from_str(&sns.message).map_err(|e| EventError::NotJson(format!("sns Message: {e}")))?;
    parse_value(&inner, true)
}

// ---- EventBridge -----------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(expecting = "a json object")]
struct WireEventBridgeHead {
    source: String,
    #[serde(rename = "detail-type")]
    detail_type: String,
    time: Option<String>,
}

#[derive(Deserialize)]
#[serde(expecting = "a json object")]
struct WireEventBridgeObject {
    key: String,
    size: Option<u64>,
    etag: Option<String>,
    #[serde(rename = "version-id")]
    version_id: Option<String>,
    sequencer: Option<String>,
}

fn parse_eventbridge(value: &Value) -> Result<Notification, EventError> {
    // One event per message; errors in it are reported as record 0.
    let bad = |reason: String| EventError::BadRecord { index: 0, reason };
    let head: WireEventBridgeHead =
        part(value, "").map_err(|e| EventError::UnknownShape(format!("eventbridge event: {e}")))?;
    if head.source != "aws.s3" {
        return Err(EventError::UnknownShape(format!("eventbridge event from source {:?}, not aws.s3", head.source)));
    }
    if head.detail_type != "Object Created" {
        return Ok(Notification::Objects { created: Vec::new(), ignored: 1 });
    }
    let bucket: WireBucket = part(value, "detail.bucket").map_err(bad)?;
    let object: WireEventBridgeObject = part(value, "detail.object").map_err(bad)?;
    if object.key.is_empty() {
        return Err(bad(format!("detail.object.key is empty (bucket {})", bucket.name)));
    }
    let reason: Option<String> = part(value, "detail.reason").ok();
    let event_time = head.time.as_deref().map(|t| parse_time(t, "time")).transpose().map_err(bad)?;
    Ok(Notification::Objects {
        created: vec![S3ObjectEvent {
            bucket: bucket.name,
            // Not decoded. Whether EventBridge URL-encodes keys is undocumented; its docs show
            // plain keys and its event patterns match keys as written. The risks are unequal:
            // decoding a raw key that holds `+` or `%` would silently name a different object,
            // while leaving an encoded key alone fails loudly (NoSuchKey on fetch, then DLQ).
            key: object.key,
            version_id: object.version_id,
            etag: object.etag,
            sequencer: object.sequencer,
            size: object.size,
            event_time,
            event_name: match reason {
                Some(reason) => format!("{}:{reason}", head.detail_type),
                None => head.detail_type,
            },
        }],
        ignored: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    /// A record shaped like the example in the S3 docs (notification-content-structure).
    fn s3_record(event_name: &str, key: &str) -> Value {
        json!({
            "eventVersion": "2.1",
            "eventSource": "aws:s3",
            "awsRegion": "eu-west-1",
            "eventTime": "2026-11-23T10:00:00.123Z",
            "eventName": event_name,
            "userIdentity": {"principalId": "AWS:AIDAJDPLRKLG7UEXAMPLE"},
            "requestParameters": {"sourceIPAddress": "203.0.113.9"},
            "responseElements": {
                "x-amz-request-id": "C3D13FE58DE4C810",
                "x-amz-id-2": "FMyUVURIY8/IgAtTv8xRjskZQpcIZ9KG4V5Wp6S7S/JRWeUWerMUE5JgHvANOjpD"
            },
            "s3": {
                "s3SchemaVersion": "1.0",
                "configurationId": "wau-csv",
                "bucket": {
                    "name": "wau-inbox",
                    "ownerIdentity": {"principalId": "A3NL1KOZZKExample"},
                    "arn": "arn:aws:s3:::wau-inbox"
                },
                "object": {
                    "key": key,
                    "size": 1024,
                    "eTag": "d41d8cd98f00b204e9800998ecf8427e",
                    "versionId": "096fKKXTRTtl3on89fVO.nfljtsv6qko",
                    "sequencer": "0055AED6DCD90281E5"
                }
            }
        })
    }

    fn body(records: Vec<Value>) -> String {
        json!({ "Records": records }).to_string()
    }

    fn created(n: Notification) -> (Vec<S3ObjectEvent>, usize) {
        match n {
            Notification::Objects { created, ignored } => (created, ignored),
            other => panic!("expected objects, got {other:?}"),
        }
    }

    fn test_event_body() -> String {
        json!({
            "Service": "Amazon S3",
            "Event": "s3:TestEvent",
            "Time": "2026-11-23T09:58:02.089Z",
            "Bucket": "wau-inbox",
            "RequestId": "5582815E1AEA5ADF",
            "HostId": "8cLeGAmw098X5cv4Zkwcmo8vvZa3eH3eKxsPzbB9wrR+YstdA6Knx4Ip8EXAMPLE"
        })
        .to_string()
    }

    fn sns_envelope(kind: &str, message: &str) -> String {
        json!({
            "Type": kind,
            "MessageId": "165545c9-2a5c-472c-8df2-7ff2be2b3b1b",
            "TopicArn": "arn:aws:sns:eu-west-1:123456789012:wau-inbox-events",
            "Subject": "Amazon S3 Notification",
            "Message": message,
            "Timestamp": "2026-11-23T10:00:01.000Z",
            "SignatureVersion": "1",
            "Signature": "EXAMPLEpH+DcEwjAPg8O9mY8dReBSwksfg2S7WKQcikcNKWLQjwu6A4VbeS0QHVCkhRS7fUQvi2egU3N858fiTDN6bkkOxYDVrY0Ad8L10Hs3zH81mtnPk5uvvolIC1CXGu43obcgFxeL3khZl8IKvO61GWB6jI9b5+gLPoBc1Q=",
            "SigningCertURL": "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-0000000000000000000000.pem",
            "UnsubscribeURL": "https://sns.eu-west-1.amazonaws.com/?Action=Unsubscribe&SubscriptionArn=arn:aws:sns:eu-west-1:123456789012:wau-inbox-events:c9135db0"
        })
        .to_string()
    }

    /// Shaped like the "Object Created" example in the S3 docs (ev-events).
    fn eventbridge(detail_type: &str, key: &str, reason: &str) -> Value {
        json!({
            "version": "0",
            "id": "17793124-05d4-b198-2fde-7ededc63b103",
            "detail-type": detail_type,
            "source": "aws.s3",
            "account": "123456789012",
            "time": "2026-11-23T10:00:00Z",
            "region": "eu-west-1",
            "resources": ["arn:aws:s3:::wau-inbox"],
            "detail": {
                "version": "0",
                "bucket": {"name": "wau-inbox"},
                "object": {
                    "key": key,
                    "size": 5,
                    "etag": "b1946ac92492d2347c6235b4d2611184",
                    "version-id": "IYV3p45BT0ac8hjHg1houSdS1a.Mro8e",
                    "sequencer": "00617F08299329D189"
                },
                "request-id": "N4N7GDK58NMKJ12R",
                "requester": "123456789012",
                "source-ip-address": "203.0.113.9",
                "reason": reason
            }
        })
    }

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32, milli: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap() + chrono::Duration::milliseconds(milli.into())
    }

    #[test]
    fn s3_put_record_yields_every_field() {
        let n = parse_body(&body(vec![s3_record("ObjectCreated:Put", "csv/acme/2026-11-23.csv")])).unwrap();
        assert_eq!(
            n,
            Notification::Objects {
                created: vec![S3ObjectEvent {
                    bucket: "wau-inbox".into(),
                    key: "csv/acme/2026-11-23.csv".into(),
                    version_id: Some("096fKKXTRTtl3on89fVO.nfljtsv6qko".into()),
                    etag: Some("d41d8cd98f00b204e9800998ecf8427e".into()),
                    sequencer: Some("0055AED6DCD90281E5".into()),
                    size: Some(1024),
                    event_time: Some(utc(2026, 11, 23, 10, 0, 0, 123)),
                    event_name: "ObjectCreated:Put".into(),
                }],
                ignored: 0,
            }
        );
    }

    #[test]
    fn every_record_of_a_multi_record_message_is_returned() {
        let n = parse_body(&body(vec![
            s3_record("ObjectCreated:Put", "a.csv"),
            s3_record("ObjectCreated:CompleteMultipartUpload", "b.csv"),
            s3_record("ObjectCreated:Copy", "c.csv"),
        ]))
        .unwrap();
        let (created, ignored) = created(n);
        let keys: Vec<&str> = created.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["a.csv", "b.csv", "c.csv"]);
        assert_eq!(created[1].event_name, "ObjectCreated:CompleteMultipartUpload");
        assert_eq!(ignored, 0);
    }

    #[test]
    fn records_other_than_creations_are_ignored_and_counted() {
        let n = parse_body(&body(vec![
            s3_record("ObjectRemoved:Delete", "old.csv"),
            s3_record("ObjectCreated:Put", "new.csv"),
            s3_record("ObjectRemoved:DeleteMarkerCreated", "old2.csv"),
            s3_record("ObjectRestore:Completed", "cold.csv"),
        ]))
        .unwrap();
        let (created, ignored) = created(n);
        assert_eq!(created.len(), 1);
        assert_eq!(created[0].key, "new.csv");
        assert_eq!(ignored, 3);
    }

    #[test]
    fn only_removals_give_no_objects_and_a_count() {
        let n = parse_body(&body(vec![s3_record("ObjectRemoved:Delete", "old.csv")])).unwrap();
        assert_eq!(n, Notification::Objects { created: vec![], ignored: 1 });
    }

    #[test]
    fn unversioned_bucket_and_missing_optional_fields() {
        let mut null_version = s3_record("ObjectCreated:Put", "a.csv");
        null_version["s3"]["object"]["versionId"] = Value::Null;
        let mut bare = s3_record("ObjectCreated:Put", "b.csv");
        let object = bare["s3"]["object"].as_object_mut().unwrap();
        for field in ["versionId", "size", "eTag", "sequencer"] {
            object.remove(field);
        }
        bare.as_object_mut().unwrap().remove("eventTime");
        let (created, _) = created(parse_body(&body(vec![null_version, bare])).unwrap());
        assert_eq!(created[0].version_id, None);
        assert_eq!(created[0].size, Some(1024));
        assert_eq!(
            created[1],
            S3ObjectEvent {
                bucket: "wau-inbox".into(),
                key: "b.csv".into(),
                version_id: None,
                etag: None,
                sequencer: None,
                size: None,
                event_time: None,
                event_name: "ObjectCreated:Put".into(),
            }
        );
    }

    /// moto 5.2: `/` escaped in keys, no zone on eventTime, no sequencer, null versionId.
    #[test]
    fn moto_shaped_record_is_read() {
        let moto = json!({"Records": [{
            "eventVersion": "2.1",
            "eventSource": "aws:s3",
            "awsRegion": "us-east-1",
            "eventTime": "2026-11-27T02:59:13.878731",
            "eventName": "ObjectCreated:Put",
            "s3": {
                "s3SchemaVersion": "1.0",
                "configurationId": "wau-csv",
                "bucket": {"name": "wau-it-1", "arn": "arn:aws:s3:::wau-it-1"},
                "object": {
                    "key": "csv%2Facme+corp%2F2026-11-27.csv",
                    "size": 311,
                    "eTag": "7a3f0c2e9b1d",
                    "versionId": null
                }
            }
        }]});
        let (created, ignored) = created(parse_body(&moto.to_string()).unwrap());
        assert_eq!(ignored, 0);
        assert_eq!(created[0].key, "csv/acme corp/2026-11-27.csv");
        assert_eq!(created[0].sequencer, None);
        assert_eq!(created[0].version_id, None);
        assert_eq!(
            created[0].event_time,
            Some(utc(2026, 11, 27, 2, 59, 13, 878) + chrono::Duration::microseconds(731))
        );
    }

    #[test]
    fn event_time_with_or_without_a_zone_is_utc() {
        let at = |raw: &str| {
            let mut record = s3_record("ObjectCreated:Put", "a.csv");
            record["eventTime"] = json!(raw);
            let (created, _) = created(parse_body(&body(vec![record])).unwrap());
            created[0].event_time.unwrap()
        };
        assert_eq!(at("2026-11-23T10:00:00.123Z"), utc(2026, 11, 23, 10, 0, 0, 123));
        assert_eq!(at("2026-11-23T10:00:00Z"), utc(2026, 11, 23, 10, 0, 0, 0));
        assert_eq!(at("2026-11-23T10:00:00"), utc(2026, 11, 23, 10, 0, 0, 0));
        assert_eq!(at("2026-11-23T10:00:00.5"), utc(2026, 11, 23, 10, 0, 0, 500));
        assert_eq!(at("2026-11-23T12:00:00+02:00"), utc(2026, 11, 23, 10, 0, 0, 0));
    }

    #[test]
    fn unreadable_event_time_is_a_bad_record() {
        let mut record = s3_record("ObjectCreated:Put", "a.csv");
        record["eventTime"] = json!("yesterday");
        let err = parse_body(&body(vec![record])).unwrap_err();
        assert_eq!(
            err,
            EventError::BadRecord { index: 0, reason: "eventTime \"yesterday\" is not an iso-8601 time".into() }
        );
    }

    #[test]
    fn record_keys_are_form_url_decoded() {
        let (created, _) = created(
            parse_body(&body(vec![
                s3_record("ObjectCreated:Put", "red+flower.jpg"),
                s3_record("ObjectCreated:Put", "c%2B%2B%2Fnotes.csv"),
                s3_record("ObjectCreated:Put", "caf%C3%A9/r%C3%A9sum%C3%A9+v2.csv"),
            ]))
            .unwrap(),
        );
        let keys: Vec<&str> = created.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["red flower.jpg", "c++/notes.csv", "café/résumé v2.csv"]);
    }

    #[test]
    fn decode_key_turns_plus_into_space_before_percent_decoding() {
        assert_eq!(decode_key("red+flower.jpg").unwrap(), "red flower.jpg");
        assert_eq!(decode_key("a%2Bb").unwrap(), "a+b");
        assert_eq!(decode_key("a%2bb+c").unwrap(), "a+b c");
        assert_eq!(decode_key("csv%2Facme%2Fx.csv").unwrap(), "csv/acme/x.csv");
        assert_eq!(decode_key("csv/acme/x.csv").unwrap(), "csv/acme/x.csv");
        assert_eq!(decode_key("%C3%A9t%C3%A9").unwrap(), "été");
        assert_eq!(decode_key("%E2%82%AC%F0%9F%93%84").unwrap(), "€📄");
        // Decoded once only: `%25` is a literal `%`.
        assert_eq!(decode_key("100%25+done%252B").unwrap(), "100% done%2B");
        assert_eq!(decode_key("").unwrap(), "");
    }

    #[test]
    fn decode_key_rejects_invalid_percent_escapes_and_non_utf8() {
        for (raw, reason) in [
            ("50%", "invalid percent escape at byte 2"),
            ("a%2", "invalid percent escape at byte 1"),
            ("a%zz.csv", "invalid percent escape at byte 1"),
            ("a%+1.csv", "invalid percent escape at byte 1"),
            ("caf%C3", "decoded bytes are not utf-8"),
            ("%FF.csv", "decoded bytes are not utf-8"),
        ] {
            assert_eq!(decode_key(raw), Err(EventError::BadKey { key: raw.into(), reason: reason.into() }), "{raw}");
        }
        assert_eq!(
            decode_key("50%").unwrap_err().to_string(),
            "object key \"50%\" cannot be decoded: invalid percent escape at byte 2"
        );
    }

    #[test]
    fn undecodable_key_in_a_record_fails_the_message_naming_record_and_bucket() {
        let err = parse_body(&body(vec![
            s3_record("ObjectCreated:Put", "ok.csv"),
            s3_record("ObjectCreated:Put", "bad%G1.csv"),
        ]))
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "record 1 of the s3 notification is unreadable: in bucket wau-inbox: \
             object key \"bad%G1.csv\" cannot be decoded: invalid percent escape at byte 3"
        );
    }

    #[test]
    fn record_missing_object_key_is_a_bad_record() {
        let mut record = s3_record("ObjectCreated:Put", "a.csv");
        record["s3"]["object"].as_object_mut().unwrap().remove("key");
        let err = parse_body(&body(vec![s3_record("ObjectCreated:Put", "ok.csv"), record])).unwrap_err();
        assert_eq!(err, EventError::BadRecord { index: 1, reason: "s3.object: missing field `key`".into() });
        assert_eq!(err.to_string(), "record 1 of the s3 notification is unreadable: s3.object: missing field `key`");
    }

    #[test]
    fn record_missing_parts_or_with_wrong_types_is_a_bad_record() {
        let reason = |mutate: &dyn Fn(&mut Value)| {
            let mut record = s3_record("ObjectCreated:Put", "a.csv");
            mutate(&mut record);
            match parse_body(&body(vec![record])).unwrap_err() {
                EventError::BadRecord { index: 0, reason } => reason,
                other => panic!("expected a bad record, got {other:?}"),
            }
        };
        assert_eq!(reason(&|r| r["s3"].as_object_mut().unwrap().clear()), "s3.bucket is missing");
        assert_eq!(
            reason(&|r| r["s3"]["object"] = json!(null)),
            "s3.object: invalid type: null, expected a json object"
        );
        assert_eq!(reason(&|r| r["s3"]["object"]["key"] = json!("")), "s3.object.key is empty (bucket wau-inbox)");
        assert!(reason(&|r| r["s3"]["object"]["size"] = json!("1024"))
            .starts_with("s3.object: invalid type: string \"1024\""));
        assert!(
            reason(&|r| r["s3"]["object"]["size"] = json!(-1)).starts_with("s3.object: invalid value: integer `-1`")
        );
        assert_eq!(
            reason(&|r| {
                r.as_object_mut().unwrap().remove("eventName");
            }),
            "missing field `eventName`"
        );
        assert_eq!(reason(&|r| r["eventVersion"] = json!("3.0")), "eventVersion \"3.0\" is not 2.x");
        assert_eq!(reason(&|r| r["eventSource"] = json!("aws:sqs")), "eventSource \"aws:sqs\" is not aws:s3");
    }

    #[test]
    fn newer_2x_event_versions_are_read() {
        let mut record = s3_record("ObjectCreated:Put", "a.csv");
        record["eventVersion"] = json!("2.6");
        let (created, _) = created(parse_body(&body(vec![record])).unwrap());
        assert_eq!(created[0].key, "a.csv");
    }

    #[test]
    fn test_event_is_its_own_variant() {
        assert_eq!(parse_body(&test_event_body()).unwrap(), Notification::TestEvent);
    }

    #[test]
    fn other_service_events_are_unknown() {
        let err = parse_body(r#"{"Service":"Amazon S3","Event":"s3:SomethingElse"}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "message body is not an s3 notification: Event \"s3:SomethingElse\" is not s3:TestEvent"
        );
    }

    #[test]
    fn sns_envelope_is_unwrapped() {
        let inner = body(vec![
            s3_record("ObjectCreated:Put", "csv/acme+corp/a.csv"),
            s3_record("ObjectRemoved:Delete", "csv/old.csv"),
        ]);
        let (created, ignored) = created(parse_body(&sns_envelope("Notification", &inner)).unwrap());
        assert_eq!(created.len(), 1);
        assert_eq!(created[0].key, "csv/acme corp/a.csv");
        assert_eq!(created[0].bucket, "wau-inbox");
        assert_eq!(ignored, 1);
    }

    #[test]
    fn sns_wrapped_test_event_is_a_test_event() {
        assert_eq!(parse_body(&sns_envelope("Notification", &test_event_body())).unwrap(), Notification::TestEvent);
    }

    #[test]
    fn sns_wrapped_eventbridge_event_is_read() {
        let inner = eventbridge("Object Created", "a.csv", "PutObject").to_string();
        let (created, _) = created(parse_body(&sns_envelope("Notification", &inner)).unwrap());
        assert_eq!(created[0].key, "a.csv");
    }

    #[test]
    fn sns_envelope_problems_are_errors() {
        assert_eq!(
            parse_body(&sns_envelope("SubscriptionConfirmation", "You have chosen to subscribe"))
                .unwrap_err()
                .to_string(),
            "message body is not an s3 notification: sns message of Type \"SubscriptionConfirmation\", not Notification"
        );
        assert!(matches!(
            parse_body(&sns_envelope("Notification", "hello")).unwrap_err(),
            EventError::NotJson(m) if m.starts_with("sns Message: ")
        ));
        let nested = sns_envelope("Notification", &sns_envelope("Notification", &test_event_body()));
        assert_eq!(
            parse_body(&nested).unwrap_err(),
            EventError::UnknownShape("an sns envelope inside an sns envelope".into())
        );
    }

    #[test]
    fn eventbridge_object_created_is_read_without_decoding_the_key() {
        let event = eventbridge("Object Created", "csv/acme corp/a+b%20c.csv", "PutObject");
        assert_eq!(
            parse_body(&event.to_string()).unwrap(),
            Notification::Objects {
                created: vec![S3ObjectEvent {
                    bucket: "wau-inbox".into(),
                    key: "csv/acme corp/a+b%20c.csv".into(),
                    version_id: Some("IYV3p45BT0ac8hjHg1houSdS1a.Mro8e".into()),
                    etag: Some("b1946ac92492d2347c6235b4d2611184".into()),
                    sequencer: Some("00617F08299329D189".into()),
                    size: Some(5),
                    event_time: Some(utc(2026, 11, 23, 10, 0, 0, 0)),
                    event_name: "Object Created:PutObject".into(),
                }],
                ignored: 0,
            }
        );
    }

    #[test]
    fn eventbridge_unversioned_object_without_reason() {
        let mut event = eventbridge("Object Created", "a.csv", "");
        let detail = event["detail"].as_object_mut().unwrap();
        detail.remove("reason");
        detail["object"].as_object_mut().unwrap().remove("version-id");
        let (created, _) = created(parse_body(&event.to_string()).unwrap());
        assert_eq!(created[0].version_id, None);
        assert_eq!(created[0].event_name, "Object Created");
    }

    #[test]
    fn eventbridge_events_other_than_creation_are_ignored() {
        for detail_type in ["Object Deleted", "Object Restore Completed", "Object Tags Added"] {
            let event = eventbridge(detail_type, "a.csv", "DeleteObject");
            assert_eq!(
                parse_body(&event.to_string()).unwrap(),
                Notification::Objects { created: vec![], ignored: 1 },
                "{detail_type}"
            );
        }
    }

    #[test]
    fn eventbridge_problems_are_errors() {
        let mut other_source = eventbridge("Object Created", "a.csv", "PutObject");
        other_source["source"] = json!("aws.ec2");
        assert_eq!(
            parse_body(&other_source.to_string()).unwrap_err().to_string(),
            "message body is not an s3 notification: eventbridge event from source \"aws.ec2\", not aws.s3"
        );
        let mut no_key = eventbridge("Object Created", "a.csv", "PutObject");
        no_key["detail"]["object"].as_object_mut().unwrap().remove("key");
        assert_eq!(
            parse_body(&no_key.to_string()).unwrap_err(),
            EventError::BadRecord { index: 0, reason: "detail.object: missing field `key`".into() }
        );
        let mut no_detail = eventbridge("Object Created", "a.csv", "PutObject");
        no_detail.as_object_mut().unwrap().remove("detail");
        assert_eq!(
            parse_body(&no_detail.to_string()).unwrap_err(),
            EventError::BadRecord { index: 0, reason: "detail.bucket is missing".into() }
        );
    }

    #[test]
    fn non_json_body_is_not_json() {
        let err = parse_body("ObjectCreated csv/a.csv").unwrap_err();
        assert!(matches!(&err, EventError::NotJson(_)), "{err:?}");
        assert!(err.to_string().starts_with("message body is not json: expected value at line 1 column 1"), "{err}");
        assert!(matches!(parse_body(""), Err(EventError::NotJson(_))));
    }

    #[test]
    fn json_of_an_unknown_shape_says_what_it_saw() {
        assert_eq!(
            parse_body(r#"{"hello":"world","n":1}"#).unwrap_err().to_string(),
            "message body is not an s3 notification: a json object with keys [hello, n] is none of: \
             s3 event (Records), s3:TestEvent, sns envelope, eventbridge event"
        );
        assert_eq!(
            parse_body("[1,2]").unwrap_err(),
            EventError::UnknownShape("expected a json object, found an array".into())
        );
        assert_eq!(
            parse_body(r#""Records""#).unwrap_err(),
            EventError::UnknownShape("expected a json object, found a string".into())
        );
        assert_eq!(
            parse_body(r#"{"Records":{}}"#).unwrap_err(),
            EventError::UnknownShape("Records is an object, not an array".into())
        );
        assert_eq!(parse_body(r#"{"Records":[]}"#).unwrap_err(), EventError::UnknownShape("Records is empty".into()));
    }
}

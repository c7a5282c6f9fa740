//! The producer side: check a CSV against the contract where it is made, add the `customer`
//! column when the file lacks it, and put it where the ingester reads — whole or not at all
//! (written as `.part`, then renamed; on S3 one PutObject). Destinations: a local folder (the
//! embedded inbox) or S3 — a bucket, an access point alias or an access point ARN.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::Utc;
use csv_async::{AsyncReaderBuilder, AsyncWriterBuilder, ByteRecord, Terminator};
use tokio::io::AsyncWriteExt;

use crate::contract::{normalise_header, Contract};
use crate::object::{decoded, ObjectStream, ReadLimits, ResolvedObject};
use crate::validate::{validate_stream, CollectSink, FileAccount, Options, Reject};

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PublishError + '_ {
    move |source| PublishError::Io { path: path.display().to_string(), source }
}

async fn open_local(
    path: &Path,
    key: &str,
    limits: ReadLimits,
) -> Result<Box<dyn tokio::io::AsyncRead + Send + Unpin>, PublishError> {
    let file = tokio::fs::File::open(path).await.map_err(io(path))?;
    let size = file.metadata().await.map_err(io(path))?.len();
    let obj = ResolvedObject {
        key: key.to_string(),
        version: String::new(),
        sequencer: String::new(),
        size,
        event_time: Utc::now(),
    };
    let stream = ObjectStream { reader: Box::new(file), content_encoding: None, read_version: None };
    Ok(decoded(stream, &obj, limits, Arc::default()))
}

/// Validates a local file (gzip by extension) as if it were stored under `key` (which decides
/// the customer of a file without the column). Good rows are counted, not kept.
pub async fn check_file(
    contract: &Contract,
    limits: ReadLimits,
    path: &Path,
    key: &str,
) -> Result<(FileAccount, Vec<Reject>), PublishError> {
    let reader = open_local(path, key, limits).await?;
    let mut sink = CollectSink { discard_rows: true, ..Default::default() };
    let account = validate_stream(reader, &Options { contract, key, limits: limits.record }, &mut sink)
        .await
        .map_err(|e| PublishError::Invalid { path: path.display().to_string(), reason: e.to_string() })?;
    Ok((account, sink.rejects))
}

#[derive(Debug)]
pub enum Published {
    /// Written to `dest`; `added_customer` when the column was added.
    Done { dest: PathBuf, rows: u64, added_customer: bool },
    /// Not published: the contract rejected rows or the whole file.
    Rejected { account: FileAccount, rejects: Vec<Reject> },
}

/// Where a file lands: into `to` when it is a folder (keeping the file name, `.gz` added when
/// compressing), else at `to` itself.
pub fn destination(src: &Path, to: &Path, gzip: bool) -> PathBuf {
    if to.is_dir() || to.as_os_str().to_string_lossy().ends_with('/') {
        let mut name =
            src.file_name().map(|n| n.to_string_lossy().trim_end_matches(".gz").to_string()).unwrap_or_default();
        if gzip {
            name.push_str(".gz");
        }
        to.join(name)
    } else {
        to.to_path_buf()
    }
}

/// Validates `src`, then writes it to `to` with the `customer` column (added when absent),
/// gzip-compressed when asked. Nothing is written unless every row is valid; rows naming
/// another customer refuse the publish.
pub async fn publish_local(
    contract: &Contract,
    limits: ReadLimits,
    src: &Path,
    to: &Path,
    customer: &str,
    gzip: bool,
) -> Result<Published, PublishError> {
    let (key, account) = match checked(contract, limits, src, customer).await? {
        Ok(checked) => checked,
        Err(rejected) => return Ok(rejected),
    };
    let dest = destination(src, to, gzip);
    if let Some(dir) = dest.parent() {
        tokio::fs::create_dir_all(dir).await.map_err(io(dir))?;
    }
    let part =
        dest.with_file_name(format!(".{}.part", dest.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()));
    let result = rewrite(contract, limits, src, &key, &part, customer, gzip).await;
    let added_customer = match result {
        Ok(added) => added,
        Err(e) => {
            let _ = tokio::fs::remove_file(&part).await;
            return Err(e);
        }
    };
    tokio::fs::rename(&part, &dest).await.map_err(io(&dest))?;
    Ok(Published::Done { dest, rows: account.rows_read, added_customer })
}

/// Validates `src` as customer `customer`'s file: `Ok((key, account))` when every row is
/// valid, else the rejection to report (nothing may be published then).
async fn checked(
    contract: &Contract,
    limits: ReadLimits,
    src: &Path,
    customer: &str,
) -> Result<Result<(String, FileAccount), Published>, PublishError> {
    if customer.is_empty() || customer.contains('/') {
        return Err(PublishError::Invalid {
            path: src.display().to_string(),
            reason: format!("{customer:?} is not a customer name"),
        });
    }
    let name = src.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let key = format!("csv/{customer}/{name}");
    let (account, rejects) = check_file(contract, limits, src, &key).await?;
    if account.file_reject.is_some() || account.rows_rejected > 0 {
        return Ok(Err(Published::Rejected { account, rejects }));
    }
    Ok(Ok((key, account)))
}

/// The key a file lands under: `prefix` + its name (`.gz` added when compressing) when
/// `prefix` is empty or ends with `/`, else `prefix` itself.
pub fn destination_key(src: &Path, prefix: &str, gzip: bool) -> String {
    if prefix.is_empty() || prefix.ends_with('/') {
        destination(src, Path::new("/"), gzip)
            .file_name()
            .map(|n| format!("{prefix}{}", n.to_string_lossy()))
            .unwrap_or_default()
    } else {
        prefix.to_string()
    }
}

/// As [`publish_local`], uploading to S3 (a bucket, access point alias or access point ARN):
/// the checked, rewritten file is staged in a temporary file and uploaded in one PutObject,
/// so a reader never sees part of it.
pub async fn publish_s3(
    contract: &Contract,
    limits: ReadLimits,
    src: &Path,
    store: &crate::object::s3::S3Store,
    prefix: &str,
    customer: &str,
    gzip: bool,
) -> Result<Published, PublishError> {
    let (key, account) = match checked(contract, limits, src, customer).await? {
        Ok(checked) => checked,
        Err(rejected) => return Ok(rejected),
    };
    let dest_key = destination_key(src, prefix, gzip);
    let dest = format!("{}/{dest_key}", crate::object::ObjectStore::bucket(store));
    let tmp = std::env::temp_dir().join(format!(
        ".wau-publish-{}-{}",
        std::process::id(),
        Utc::now().timestamp_nanos_opt().unwrap_or(0)
    ));
    let result = async {
        let added = rewrite(contract, limits, src, &key, &tmp, customer, gzip).await?;
        store
            .put_file(&dest_key, &tmp, None)
            .await
            .map_err(|e| PublishError::Io { path: dest.clone(), source: std::io::Error::other(e.to_string()) })?;
        Ok(added)
    }
    .await;
    let _ = tokio::fs::remove_file(&tmp).await;
    let added_customer = result?;
    let dest = PathBuf::from(dest);
    Ok(Published::Done { dest, rows: account.rows_read, added_customer })
}

/// Copies the CSV to `part`, adding the customer column when absent; true if it was added.
async fn rewrite(
    contract: &Contract,
    limits: ReadLimits,
    src: &Path,
    key: &str,
    part: &Path,
    customer: &str,
    gzip: bool,
) -> Result<bool, PublishError> {
    let reader = open_local(src, key, limits).await?;
    let mut rdr = AsyncReaderBuilder::new().has_headers(false).flexible(true).create_reader(reader);
    let file = tokio::fs::File::create(part).await.map_err(io(part))?;
    let sink: Box<dyn tokio::io::AsyncWrite + Send + Unpin> =
        if gzip { Box::new(async_compression::tokio::write::GzipEncoder::new(file)) } else { Box::new(file) };
    let mut wtr = AsyncWriterBuilder::new().terminator(Terminator::Any(b'\n')).create_writer(sink);
    let invalid = |reason: String| PublishError::Invalid { path: src.display().to_string(), reason };
    let csv_err = |e: csv_async::Error| invalid(e.to_string());

    let mut header = ByteRecord::new();
    if !rdr.read_byte_record(&mut header).await.map_err(csv_err)? {
        return Err(invalid("the file is empty".into()));
    }
    let customer_at = header
        .iter()
        .position(|h| std::str::from_utf8(h).is_ok_and(|h| normalise_header(h) == contract.customer_column));
    let mut out = ByteRecord::new();
    let push_row = |out: &mut ByteRecord, rec: &ByteRecord, first: Option<&[u8]>| {
        out.clear();
        if let Some(f) = first {
            out.push_field(f);
        }
        for field in rec.iter() {
            out.push_field(field);
        }
    };
    push_row(&mut out, &header, customer_at.is_none().then_some(contract.customer_column.as_bytes()));
    wtr.write_byte_record(&out).await.map_err(csv_err)?;
    let mut rec = ByteRecord::new();
    while rdr.read_byte_record(&mut rec).await.map_err(csv_err)? {
        if let Some(i) = customer_at {
            let given = rec.get(i).map(|v| String::from_utf8_lossy(v).trim().to_string()).unwrap_or_default();
            if given != customer {
                let line = rec.position().map_or(0, |p| p.line() + 1);
                return Err(invalid(format!(
                    "line {line}: customer {given:?} is not {customer:?}; a producer publishes only its own rows"
                )));
            }
        }
        push_row(&mut out, &rec, customer_at.is_none().then_some(customer.as_bytes()));
        wtr.write_byte_record(&out).await.map_err(csv_err)?;
    }
    let mut sink = wtr.into_inner().await.map_err(|e| invalid(e.to_string()))?;
    sink.shutdown().await.map_err(io(part))?;
    Ok(customer_at.is_none())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    const LEGACY: &str = "event_id,event_time,user_id,event_type\ne1,2026-11-23T10:00:00Z,u1,login\ne2,2026-11-23T11:00:00Z,u2,\"log\nout\"\n";

    #[tokio::test]
    async fn adds_the_customer_column_and_lands_whole() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("export.csv");
        std::fs::write(&src, LEGACY).unwrap();
        let inbox = dir.path().join("inbox/csv/acme");
        std::fs::create_dir_all(&inbox).unwrap();
        let c = Contract::builtin();
        let out = publish_local(&c, ReadLimits::default(), &src, &inbox, "acme", false).await.unwrap();
        let Published::Done { dest, rows, added_customer } = out else { panic!("{out:?}") };
        assert_eq!((rows, added_customer), (2, true));
        assert_eq!(dest, inbox.join("export.csv"));
        assert_eq!(
            std::fs::read_to_string(&dest).unwrap(),
            "customer,event_id,event_time,user_id,event_type\nacme,e1,2026-11-23T10:00:00Z,u1,login\nacme,e2,2026-11-23T11:00:00Z,u2,\"log\nout\"\n"
        );
        assert_eq!(std::fs::read_dir(&inbox).unwrap().count(), 1, "no .part left behind");
        // What was published validates as its own customer's file.
        let (acc, _) = check_file(&c, ReadLimits::default(), &dest, "export.csv").await.unwrap();
        assert_eq!((acc.rows_loaded, acc.rows_rejected), (2, 0));
    }

    #[tokio::test]
    async fn gzip_on_request() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("export.csv");
        std::fs::write(&src, LEGACY).unwrap();
        let to = dir.path().join("out/");
        let out = publish_local(&Contract::builtin(), ReadLimits::default(), &src, &to, "acme", true).await.unwrap();
        let Published::Done { dest, .. } = out else { panic!("{out:?}") };
        assert_eq!(dest, to.join("export.csv.gz"));
        let mut text = String::new();
        flate2::read::MultiGzDecoder::new(std::fs::File::open(&dest).unwrap()).read_to_string(&mut text).unwrap();
        assert!(text.starts_with("customer,event_id"), "{text}");
    }

    #[tokio::test]
    async fn invalid_files_and_foreign_rows_are_not_published() {
        let dir = tempfile::tempdir().unwrap();
        let c = Contract::builtin();
        let bad = dir.path().join("bad.csv");
        std::fs::write(&bad, "event_id,event_time,user_id,event_type\ne1,yesterday,u1,login\n").unwrap();
        let to = dir.path().join("inbox");
        std::fs::create_dir_all(&to).unwrap();
        let out = publish_local(&c, ReadLimits::default(), &bad, &to, "acme", false).await.unwrap();
        let Published::Rejected { account, rejects } = out else { panic!("{out:?}") };
        assert_eq!(account.rows_rejected, 1);
        assert_eq!(rejects[0].rule, "type");

        let foreign = dir.path().join("foreign.csv");
        std::fs::write(&foreign, format!("{}\nglobex,e1,2026-11-23T10:00:00Z,u1,,login,,\n", crate::demo::HEADER))
            .unwrap();
        // The validator's tenant rule refuses the row before anything is written.
        let out = publish_local(&c, ReadLimits::default(), &foreign, &to, "acme", false).await.unwrap();
        let Published::Rejected { rejects, .. } = out else { panic!("{out:?}") };
        assert_eq!((rejects[0].rule, rejects[0].line), ("customer_mismatch", 2));
        assert_eq!(std::fs::read_dir(&to).unwrap().count(), 0, "nothing published, no .part left");
    }
}

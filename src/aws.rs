//! AWS clients and `s3://` URIs for the production path.
//!
//! Credentials, region and endpoints come from the SDK's standard chain (`AWS_REGION`,
//! `AWS_PROFILE`, the ECS task role, `AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_<SERVICE>`), so the
//! same binary talks to AWS in production and to moto and the Data API emulator on one machine
//! (`scripts/local-aws.sh`). The only setting of our own is path-style S3 addressing.

use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use crate::config::AwsConfig;

/// The SDK configuration from the environment (one per process; clients share it).
pub async fn sdk_config() -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest()).load().await
}

fn endpoint_overridden(service_var: &str) -> bool {
    std::env::var_os(service_var).is_some_and(|v| !v.is_empty())
        || std::env::var_os("AWS_ENDPOINT_URL").is_some_and(|v| !v.is_empty())
}

/// An S3 client; path-style when configured or when the endpoint is overridden (moto, MinIO:
/// virtual-hosted names like `bucket.127.0.0.1` do not resolve).
pub fn s3_client(sdk: &SdkConfig, cfg: &AwsConfig) -> aws_sdk_s3::Client {
    let path_style = cfg.s3_force_path_style || endpoint_overridden("AWS_ENDPOINT_URL_S3");
    aws_sdk_s3::Client::from_conf(aws_sdk_s3::config::Builder::from(sdk).force_path_style(path_style).build())
}

/// `s3://BUCKET/PREFIX` → (bucket, prefix). The bucket may be a name, an access point alias
/// (a name too) or an access point ARN (`arn:aws:s3:REGION:ACCOUNT:accesspoint/NAME`), whose
/// own `/` does not end the bucket part.
pub fn parse_s3_uri(uri: &str) -> Option<(String, String)> {
    let rest = uri.strip_prefix("s3://")?;
    let (bucket, prefix) = if rest.starts_with("arn:") {
        // arn:partition:s3:region:account:accesspoint/NAME[/prefix]
        let slash = rest.find("accesspoint/")? + "accesspoint/".len();
        match rest[slash..].find('/') {
            Some(i) => (&rest[..slash + i], &rest[slash + i + 1..]),
            None => (rest, ""),
        }
    } else {
        rest.split_once('/').unwrap_or((rest, ""))
    };
    (!bucket.is_empty() && !bucket.ends_with('/')).then(|| (bucket.to_string(), prefix.to_string()))
}

/// A destination or source given as text: `Ok(Some((bucket, prefix)))` for an `s3://` URI,
/// `Ok(None)` for anything else (a local path), an error for a malformed `s3://` URI.
pub fn s3_target(target: &str) -> Result<Option<(String, String)>, String> {
    match parse_s3_uri(target) {
        Some(parsed) => Ok(Some(parsed)),
        None if target.starts_with("s3://") => Err(format!("{target:?} is not an s3://bucket/prefix URI")),
        None => Ok(None),
    }
}

/// A failed call worth repeating as is: throttling, too many active statements, a server error.
pub fn is_transient(code: Option<&str>, http_status: Option<u16>) -> bool {
    matches!(
        code,
        Some(
            "ThrottlingException"
                | "Throttling"
                | "ThrottledException"
                | "TooManyRequestsException"
                | "RequestLimitExceeded"
                | "ActiveStatementsExceededException"
                | "ActiveSessionsExceededException"
                | "InternalServerException"
                | "InternalFailure"
                | "ServiceUnavailable"
                | "ServiceUnavailableException"
                | "RequestTimeout"
                | "RequestTimeoutException"
                | "SlowDown"
        )
    ) || http_status.is_some_and(|s| s == 429 || s >= 500)
}

/// A failed SDK call, classified: worth repeating as is, or not.
#[derive(Debug)]
pub struct CallError {
    pub transient: bool,
    pub text: String,
}

/// Classifies any AWS SDK crate's error (they share smithy's error and response types).
pub fn call_error<E>(e: SdkError<E, HttpResponse>) -> CallError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let transient = match &e {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => true,
        SdkError::ServiceError(ctx) => is_transient(ctx.err().code(), Some(ctx.raw().status().as_u16())),
        _ => false,
    };
    CallError { transient, text: DisplayErrorContext(&e).to_string() }
}

/// Retry policies of our own, side by side, each on top of the SDK's own retries (standard mode,
/// 3 attempts, for throttling and transport errors).
pub mod retry {
    use std::time::Duration;

    use backon::ExponentialBuilder;

    /// A Data API or S3 staging call that failed transiently: 5 more tries, 100 ms to 5 s.
    pub fn transient() -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(5))
            .with_max_times(5)
            .with_jitter()
    }

    /// A Redshift batch aborted by a concurrency conflict: run whole again, 6 more times, 200 ms
    /// to 5 s (the writers' lock makes these rare; see docs/design.md, Isolation).
    pub fn conflict() -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(5))
            .with_max_times(6)
            .with_jitter()
    }
}

/// The HTTP status of a failed SDK call, when the service answered at all. Every SDK crate
/// shares the smithy error and response types, so this serves S3, SQS, the Data API and Glue.
pub fn status_of<E>(err: &aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> Option<u16> {
    err.raw_response().map(|r| r.status().as_u16())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_and_server_errors_are_transient_refusals_are_not() {
        assert!(is_transient(Some("ThrottlingException"), Some(400)));
        assert!(is_transient(Some("ActiveStatementsExceededException"), Some(400)));
        assert!(is_transient(None, Some(503)));
        assert!(is_transient(Some("InternalServerException"), Some(500)));
        assert!(!is_transient(Some("ValidationException"), Some(400)));
        assert!(!is_transient(Some("ResourceNotFoundException"), Some(400)));
    }

    #[test]
    fn s3_uris_with_names_aliases_and_access_point_arns() {
        let p = parse_s3_uri;
        assert_eq!(p("s3://wau-audit/csv/acme/"), Some(("wau-audit".into(), "csv/acme/".into())));
        assert_eq!(p("s3://wau-audit"), Some(("wau-audit".into(), "".into())));
        assert_eq!(p("s3://wau-ap-abc123-s3alias/csv/"), Some(("wau-ap-abc123-s3alias".into(), "csv/".into())));
        assert_eq!(
            p("s3://arn:aws:s3:eu-west-1:123456789012:accesspoint/acme-writer/csv/acme/x.csv"),
            Some(("arn:aws:s3:eu-west-1:123456789012:accesspoint/acme-writer".into(), "csv/acme/x.csv".into()))
        );
        assert_eq!(
            p("s3://arn:aws:s3:eu-west-1:123456789012:accesspoint/acme-writer"),
            Some(("arn:aws:s3:eu-west-1:123456789012:accesspoint/acme-writer".into(), "".into()))
        );
        assert_eq!(p("s3:///csv/"), None);
        assert_eq!(p("/tmp/inbox"), None);
        assert_eq!(p("s3://arn:aws:s3:eu-west-1:1:bucket/x"), None);
    }
}

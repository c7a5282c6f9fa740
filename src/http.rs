//! `/metrics`, `/healthz` and `/readyz`, and the `healthcheck` client for images without a shell.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::metrics::Metrics;

/// Answers `/readyz`: are the source and the warehouse reachable?
pub type ReadyCheck = Arc<dyn Fn() -> std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    ready: ReadyCheck,
}

async fn metrics_text(State(s): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.metrics.render())
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(s): State<AppState>) -> (StatusCode, String) {
    match (s.ready)().await {
        Ok(()) => (StatusCode::OK, "ready\n".into()),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {reason}\n")),
    }
}

/// Binds `listen` and serves until `shutdown` resolves.
pub async fn serve(
    listen: &str,
    metrics: Arc<Metrics>,
    ready: ReadyCheck,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(listen = %listener.local_addr()?, "http listening");
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(AppState { metrics, ready });
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
            tracing::error!(error = %e, "http server failed");
        }
    }))
}

/// GETs `path` from `addr` with a deadline; Ok when the status is 200.
pub async fn probe(addr: &str, path: &str, timeout: Duration) -> Result<(), String> {
    let fut = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
        let mut resp = Vec::new();
        stream.read_to_end(&mut resp).await.map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&resp);
        let status = text.lines().next().unwrap_or("");
        if status.split_whitespace().nth(1) == Some("200") {
            Ok(())
        } else {
            Err(format!("{path}: {status}"))
        }
    };
    tokio::time::timeout(timeout, fut).await.map_err(|_| format!("{addr}{path}: no answer within {timeout:?}"))?
}

/// The address a local probe should use for a listen address (`0.0.0.0` → loopback).
pub fn probe_address(listen: &str) -> String {
    match listen.rsplit_once(':') {
        Some((host, port)) if host == "0.0.0.0" || host == "[::]" || host.is_empty() => format!("127.0.0.1:{port}"),
        _ => listen.to_string(),
    }
}

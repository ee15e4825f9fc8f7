//! The accept loop: HTTP/1.1 connections served by hyper with a header read timeout, a limit
//! on open connections, and a graceful shutdown bounded in time.
//!
//! `axum::serve` sets no timer, so a connection that sends nothing (or half a request head) is
//! held for ever, and it accepts every connection; both let a client exhaust file descriptors
//! and slow everyone else down.

use crate::config::ServerConfig;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

/// The body of the 503 a connection beyond `server.max_connections` gets before it is closed.
const TOO_MANY_CONNECTIONS: &str = "too many open connections (server.max_connections)\n";

/// How long the refusal may take to write: a client that does not read it is not waited for.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_millis(200);

/// Serves `app` on `listener` until `shutdown` completes; then stops accepting, lets requests
/// in flight finish for at most `cfg.shutdown_grace` and drops the connections still open
/// (which cancels their handlers).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    cfg: &ServerConfig,
    shutdown: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(cfg.max_connections));
    let header_timeout = Duration::from_millis(cfg.header_read_timeout.0 as u64);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            biased;
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    accept_error(e).await;
                    continue;
                }
            },
        };
        // Reap finished connections so the set holds only live ones.
        while conns.try_join_next().is_some() {}
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Over the limit: answer and close at once, off the accept loop.
            tokio::spawn(refuse(stream));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let mut stop = stop_rx.clone();
        conns.spawn(async move {
            let _slot = slot;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout);
            let conn =
                builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!("connection closed: {e}");
                    }
                    return;
                }
                _ = stop.wait_for(|s| *s) => conn.as_mut().graceful_shutdown(),
            }
            if let Err(e) = conn.await {
                tracing::debug!("connection closed during shutdown: {e}");
            }
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let grace = Duration::from_millis(cfg.shutdown_grace.0 as u64);
    let drained =
        tokio::time::timeout(grace, async { while conns.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            open = conns.len(),
            "requests still in flight after server.shutdown_grace: closing their connections"
        );
        conns.shutdown().await;
    }
}

/// Answers a connection beyond the limit with a 503 and closes it.
async fn refuse(mut stream: TcpStream) {
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\nconnection: close\r\n\
         content-length: {}\r\n\r\n{TOO_MANY_CONNECTIONS}",
        TOO_MANY_CONNECTIONS.len()
    );
    let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}

/// Accept errors that concern one connection are skipped; others (out of file descriptors)
/// pause accepting for a moment, since retrying at once would spin.
async fn accept_error(e: std::io::Error) {
    use std::io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    ) {
        return;
    }
    tracing::error!("accept error: {e}");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

//! The accept loop: HTTP/1.1 connections served by hyper with a header read timeout, a limit
//! on open connections, and a graceful shutdown bounded in time.
//!
//! `axum::serve` sets no timer, so a connection that sends nothing (or half a request head) is
//! held for ever, and it accepts every connection; both let a client exhaust file descriptors
//! and slow everyone else down.

use crate::config::ServerConfig;
use crate::metrics::{HttpCounters, Refusal};
use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue, Request, StatusCode};
use axum::response::Response;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tower_service::Service;

/// The body of the 503 a connection beyond `server.max_connections` gets before it is closed.
const TOO_MANY_CONNECTIONS: &str = "too many open connections (server.max_connections)\n";

/// How long a refused connection's request head is waited for, and then how long its answer
/// may take to write: a client that sends or reads nothing is not waited for longer.
const REFUSAL_WAIT: Duration = Duration::from_millis(100);

/// Most of a refused client's request that is read and discarded before closing.
const REFUSAL_DISCARD_BYTES: usize = 64 << 10;

/// Serves `app` on `listener` until `shutdown` completes; then stops accepting, lets requests
/// in flight finish for at most `cfg.shutdown_grace` and drops the connections still open
/// (which cancels their handlers). What the limits do is counted in `counters`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    cfg: &ServerConfig,
    counters: Arc<HttpCounters>,
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
            counters.connection_refused();
            tokio::spawn(refuse(stream));
            continue;
        };
        let _ = stream.set_nodelay(true);
        limit_unsent(&stream);
        let mut stop = stop_rx.clone();
        let busy = Arc::new(AtomicUsize::new(0));
        let service = tracked(app.clone(), busy.clone(), counters.clone());
        let open = counters.opened();
        let counters = counters.clone();
        conns.spawn(async move {
            let _slot = (slot, open);
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout);
            // With upgrades: `/api/v1/stream` takes the connection over as a WebSocket.
            let conn = builder
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        if e.is_timeout() {
                            counters.header_timeout();
                        }
                        tracing::debug!("connection closed: {e}");
                    }
                    return;
                }
                _ = stop.wait_for(|s| *s) => {
                    // Idle, or still sending a request head: nothing to finish.
                    if busy.load(Ordering::Acquire) == 0 {
                        return;
                    }
                    conn.as_mut().graceful_shutdown();
                }
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

/// `app` as a hyper service that counts, in `busy`, the connection's requests from their
/// arrival until their response body is written (a streamed export included), and counts
/// the requests refused for their body in `counters`.
fn tracked(
    app: Router,
    busy: Arc<AtomicUsize>,
    counters: Arc<HttpCounters>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response,
    Error = Infallible,
    Future = impl Future<Output = Result<Response, Infallible>> + Send,
> + Clone {
    hyper::service::service_fn(move |req: Request<Incoming>| {
        let guard = InFlight::enter(&busy);
        let answer = app.clone().call(req);
        let counters = counters.clone();
        async move {
            let mut resp = answer.await?;
            match resp.status() {
                StatusCode::PAYLOAD_TOO_LARGE => counters.refused(Refusal::BodyTooLarge),
                StatusCode::REQUEST_TIMEOUT => {
                    // The rest of a stalled body may still come, and must not be read as the
                    // next request: the connection ends with this answer.
                    counters.refused(Refusal::BodyTimeout);
                    resp.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                _ => {}
            }
            Ok(resp.map(|body| {
                Body::new(TrackedBody {
                    body,
                    _guard: guard,
                })
            }))
        }
    })
}

/// One request of a connection in flight; counted down when dropped.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn enter(busy: &Arc<AtomicUsize>) -> InFlight {
        busy.fetch_add(1, Ordering::AcqRel);
        InFlight(busy.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request counted until hyper has written (or dropped) it.
struct TrackedBody {
    body: Body,
    _guard: InFlight,
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Answers a connection beyond the limit with a 503 and closes it. The client's request head
/// is awaited first (briefly): HTTP clients take an answer that comes before their request
/// for a broken connection. What the client sent is read and discarded (a little): closing
/// with unread data would reset the connection and could destroy the answer.
async fn refuse(mut stream: TcpStream) {
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(REFUSAL_WAIT, async {
        let mut read = 0;
        while read < REFUSAL_DISCARD_BYTES {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) if sink[..n].windows(4).any(|w| w == b"\r\n\r\n") => break,
                Ok(n) => read += n,
            }
        }
    })
    .await;
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\nconnection: close\r\n\
         content-length: {}\r\n\r\n{TOO_MANY_CONNECTIONS}",
        TOO_MANY_CONNECTIONS.len()
    );
    let _ = tokio::time::timeout(REFUSAL_WAIT, async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await?;
        let mut read = 0;
        while read < REFUSAL_DISCARD_BYTES {
            match stream.read(&mut sink).await? {
                0 => break,
                n => read += n,
            }
        }
        std::io::Result::Ok(())
    })
    .await;
}

/// Unsent bytes a connection's kernel buffer holds before writes wait (`TCP_NOTSENT_LOWAT`).
const MAX_UNSENT_BYTES: libc::c_int = 128 << 10;

/// Caps what the kernel queues unsent on `stream` (in-flight data still grows with the
/// window, so bulk answers keep their speed). Without it a stream subscriber that stops
/// reading lets megabytes of stale updates pile up in its socket (send buffers autotune to
/// `tcp_wmem`'s maximum, 4 MiB) instead of being conflated in its queue.
fn limit_unsent(stream: &tokio::net::TcpStream) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let v = MAX_UNSENT_BYTES;
        // SAFETY: a valid socket descriptor and an int option of the size given.
        let rc = unsafe {
            libc::setsockopt(
                stream.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_NOTSENT_LOWAT,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            tracing::debug!("TCP_NOTSENT_LOWAT: {}", std::io::Error::last_os_error());
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (stream, MAX_UNSENT_BYTES);
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

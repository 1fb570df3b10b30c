//! The HTTP server loop: HTTP/1.1 connections served by hyper, one task each, under three
//! limits from [`HttpConfig`] (`axum::serve` has none of them, so a client that sends half a
//! request and stops would hold its connection, and a file descriptor, forever):
//!
//! - a request head (line and headers) must arrive within `header_read_timeout_ms` of the
//!   connection opening or of its previous response, or the connection is closed;
//! - a request body must arrive whole within `body_read_timeout_ms` of the request head, or
//!   the request is answered `408` (a deadline for the whole body, not a gap between chunks: a
//!   client sending one byte a second cannot hold a connection for hours);
//! - at most `max_connections` are open; the next waits in the kernel's listen backlog.
//!
//! HTTP/2 and TLS belong to the load balancer in front of the hosts.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use firstcome_platform::config::HttpConfig;

/// File descriptors kept for everything but client connections: database and Redis pools,
/// the broker, plugin files, logs.
const RESERVED_FDS: u64 = 256;

/// Raises the soft open-file limit to the hard one (as Go's runtime does at start-up) and
/// returns the connection cap that fits in it: `configured`, or fewer when the limit is lower
/// than `configured` + 256. Logs what it did.
pub fn fit_connection_cap(configured: usize) -> usize {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            limit = raised;
        }
    }
    let Some(soft) = limit.current else {
        return configured;
    };
    let fits = soft.saturating_sub(RESERVED_FDS).max(16) as usize;
    if fits < configured {
        tracing::warn!(
            open_file_limit = soft,
            configured,
            cap = fits,
            "http.max_connections lowered to fit the open-file limit (ulimit -n)"
        );
        fits
    } else {
        configured
    }
}

/// Serves `router` on `listener` until `shutdown`, then lets open requests finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: &HttpConfig,
    shutdown: CancellationToken,
) {
    let cap = fit_connection_cap(limits.max_connections);
    let permits = Arc::new(Semaphore::new(cap));
    let body_deadline = Duration::from_millis(limits.body_read_timeout_ms);
    let router = router.layer(axum::middleware::map_request(move |request: Request| {
        std::future::ready(with_body_deadline(request, body_deadline))
    }));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(limits.header_read_timeout_ms));
    let graceful = GracefulShutdown::new();
    let open = metrics::gauge!("firstcome_http_connections");
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("never closed"),
            () = shutdown.cancelled() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors or a connection reset before accept: the listener
                    // itself is fine; wait a little rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        // The peer's address, for the client address of limits (`shoppers::address`).
        let service = TowerToHyperService::new(tower::ServiceExt::map_request(
            router.clone(),
            move |mut request: hyper::Request<hyper::body::Incoming>| {
                request
                    .extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                request
            },
        ));
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        open.increment(1.0);
        let open = open.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                log_connection_end(peer, &e);
            }
            open.decrement(1.0);
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Why a request body stopped: it had not arrived whole by its deadline.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive whole within {0:?}")]
pub struct BodyDeadline(pub Duration);

/// The request with a body that fails with [`BodyDeadline`] once `limit` has passed.
fn with_body_deadline(request: Request, limit: Duration) -> Request {
    if request.body().is_end_stream() {
        return request;
    }
    request.map(|inner| {
        Body::new(DeadlineBody {
            inner,
            limit,
            deadline: Box::pin(tokio::time::sleep(limit)),
        })
    })
}

/// A body with a deadline for all of it (tower-http's body timeout restarts at every chunk).
struct DeadlineBody {
    inner: Body,
    limit: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, axum::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            let limit = self.limit;
            return Poll::Ready(Some(Err(axum::Error::new(BodyDeadline(limit)))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// A connection that ended in error: a timed-out or broken client, worth a debug line.
fn log_connection_end(peer: SocketAddr, error: &hyper::Error) {
    if error.is_timeout() {
        metrics::counter!("firstcome_http_header_timeouts_total").increment(1);
    }
    tracing::debug!(%peer, %error, "connection closed");
}

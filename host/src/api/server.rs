//! The HTTP server loop: HTTP/1.1 connections served by hyper, one task each, under three
//! limits from [`HttpConfig`] (`axum::serve` has none of them, so a client that sends half a
//! request and stops would hold its connection, and a file descriptor, forever):
//!
//! - a request head (line and headers) must arrive within `header_read_timeout_ms` of the
//!   connection opening or of its previous response, or the connection is closed;
//! - a request body must arrive within `body_read_timeout_ms`, or the request is answered
//!   `408`;
//! - at most `max_connections` are open; the next waits in the kernel's listen backlog.
//!
//! HTTP/2 and TLS belong to the load balancer in front of the hosts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::HttpConfig;

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
    let router = router.layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
        Duration::from_millis(limits.body_read_timeout_ms),
    ));
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
        let service = TowerToHyperService::new(router.clone());
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

/// A connection that ended in error: a timed-out or broken client, worth a debug line.
fn log_connection_end(peer: SocketAddr, error: &hyper::Error) {
    if error.is_timeout() {
        metrics::counter!("firstcome_http_header_timeouts_total").increment(1);
    }
    tracing::debug!(%peer, %error, "connection closed");
}

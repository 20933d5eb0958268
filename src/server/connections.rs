//! Accepting connections: at most `--max-connections` at once, each closed when it has not sent a
//! whole request header within `--idle-connection-timeout` (a slowloris sender, or a keep-alive
//! connection left idle), and a graceful stop. axum's own `serve` has neither knob, so this is
//! its accept loop with them. An answer that leaves its request's body unread says
//! `Connection: close`, because hyper is about to close that connection.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::http::Version;
use axum::http::header::{CONNECTION, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::ServerOptions;

/// Serves `app` on `listener` until `stop` fires, then stops accepting connections and waits for
/// the open ones to finish (cancel the `sessions` token to end long-lived streams).
pub fn serve(
    listener: TcpListener,
    app: Router,
    options: &ServerOptions,
    stop: CancellationToken,
) -> impl Future<Output = std::io::Result<()>> + Send + 'static {
    let (limit, idle) = (options.max_connections, options.idle_connection_timeout);
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(idle);
    // HTTP/2 (prior knowledge) has no header timer: pings find dead peers instead.
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(idle)
        .keep_alive_timeout(idle);
    let app = app.layer(axum::middleware::from_fn(close_if_body_unread));
    accept(listener, app, builder, limit, stop)
}

async fn accept(
    listener: TcpListener,
    app: Router,
    builder: Builder<TokioExecutor>,
    limit: usize,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(limit));
    let graceful = GracefulShutdown::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors or the like: the connections that hold them end
                    // in time, so wait a little rather than spin or give up.
                    tracing::error!("accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tokio::spawn(refuse(stream, limit));
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        let connection = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("connection ended: {e}");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// hyper closes an HTTP/1 connection whose last request body was not read to its end (the rest
/// of it is still on the wire) — after a refusal, or a 204 to a DELETE that came with a body.
/// Saying so keeps a pooled client from sending its next request down that connection.
async fn close_if_body_unread(request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    if parts.version > Version::HTTP_11 {
        // HTTP/2 resets the one stream, not the connection (and has no Connection header).
        return next.run(Request::from_parts(parts, body)).await;
    }
    let read = Arc::new(AtomicBool::new(body.is_end_stream()));
    let body = Body::new(Tracked {
        inner: body,
        read: read.clone(),
    });
    let mut response = next.run(Request::from_parts(parts, body)).await;
    if !read.load(Ordering::Acquire) {
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// A request body that records when it has been read to its end.
struct Tracked {
    inner: Body,
    read: Arc<AtomicBool>,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let frame = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(frame, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.read.store(true, Ordering::Release);
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Answers a connection past the limit with 503 and closes it.
async fn refuse(mut stream: TcpStream, limit: usize) {
    tracing::warn!("refused a connection: {limit} are open (--max-connections)");
    let body = format!(
        "this server already has its limit of {limit} connections open (--max-connections); \
         retry shortly\n"
    );
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n\
         retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    // Read what the client sent first (briefly), so that closing does not reset the connection
    // before it reads the answer.
    let mut request = [0u8; 8192];
    let _ = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut request)).await;
    if stream.write_all(response.as_bytes()).await.is_ok() {
        let _ = stream.shutdown().await;
    }
}

//! The HTTP server loop of the three services, in place of `axum::serve`, which has no settings: a
//! client cannot hold a connection forever. And the JSON 404 and 405 every router falls back to.
//! - Headers must arrive whole within [`Limits::header_read_timeout`]; otherwise the connection is
//!   closed (hyper's `header_read_timeout`).
//! - Between two pieces of a request body at most [`Limits::body_read_timeout`] may pass; the
//!   handler reading it then gets an error that [`is_body_timeout`] recognises, and answers 408.
//! - At most [`Limits::max_connections`] connections are open at once; further ones wait in the
//!   kernel's accept queue until one closes.
//!
//! On shutdown the listener closes (a socket passed by systemd stays open in systemd, so new
//! connections wait for the next process). Open connections are then drained for up to
//! [`Limits::drain`]: each gets its next answer with `Connection: close` and closes after it, so a
//! client never has a kept-alive connection closed under a request it is sending. Connections still
//! idle at the end close, and requests in flight finish.

pub mod metrics;
pub mod observe;
pub mod pause;
mod spread;

use std::future::Future;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::pause::PauseTimeout;
use axum::extract::{ConnectInfo, Request};
use axum::http::{header, HeaderValue, Method, StatusCode, Uri, Version};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use hyper::body::{Body as _, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use service_common::ErrorBody;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::ServiceExt;

/// 404 `not_found` in the platform's [`ErrorBody`], for `Router::fallback`.
pub async fn route_not_found(uri: Uri) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(ErrorBody::new(
            "not_found",
            format!("no route for {}", uri.path()),
        )),
    )
        .into_response()
}

/// 405 `method_not_allowed` in the platform's [`ErrorBody`], for
/// `Router::method_not_allowed_fallback`.
pub async fn method_not_allowed(method: Method) -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        Json(ErrorBody::new(
            "method_not_allowed",
            format!("method {method} is not allowed here"),
        )),
    )
        .into_response()
}

/// `router` answering every unknown path and every wrong method with the platform's JSON error,
/// never axum's empty or plain-text default.
pub fn with_json_fallbacks<S>(router: Router<S>) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    router
        .fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed)
}

/// How long a client may take; each has a default fit for a public entry point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Time for the request line and headers to arrive whole.
    pub header_read_timeout: Duration,
    /// Longest pause while a request body is being received.
    pub body_read_timeout: Duration,
    /// Connections open at once.
    pub max_connections: usize,
    /// On shutdown, how long open connections get to take one more request (answered with
    /// `Connection: close`) before the idle ones are closed.
    pub drain: Duration,
}

impl Limits {
    /// The connections open at once, at least one: the permits of every accept loop together.
    fn connections(&self) -> usize {
        self.max_connections.max(1)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            max_connections: 1024,
            drain: Duration::from_secs(1),
        }
    }
}

/// The limits as settings of a service's command line and environment (`#[command(flatten)]`).
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct ServerArgs {
    /// Time a client has to send the request line and headers, in milliseconds; then the
    /// connection is closed.
    #[arg(long, env = "HEADER_READ_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub header_read_timeout_ms: u64,

    /// Longest pause while a request body arrives, in milliseconds; then the answer is a JSON 408.
    #[arg(long, env = "BODY_READ_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub body_read_timeout_ms: u64,

    /// Connections open at once; more wait to be accepted until one closes.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 1024,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_connections: u64,

    /// On shutdown, how long open keep-alive connections get to send one more request (answered
    /// with `Connection: close`) before the idle ones are closed, in milliseconds; 0 closes them
    /// at once.
    #[arg(long, env = "SHUTDOWN_DRAIN_MS", default_value_t = 1_000,
          value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub shutdown_drain_ms: u64,
}

impl Default for ServerArgs {
    fn default() -> Self {
        let limits = Limits::default();
        Self {
            header_read_timeout_ms: limits.header_read_timeout.as_millis() as u64,
            body_read_timeout_ms: limits.body_read_timeout.as_millis() as u64,
            max_connections: limits.max_connections as u64,
            shutdown_drain_ms: limits.drain.as_millis() as u64,
        }
    }
}

impl ServerArgs {
    /// The limits these settings give.
    pub fn limits(&self) -> Limits {
        Limits {
            header_read_timeout: Duration::from_millis(self.header_read_timeout_ms),
            body_read_timeout: Duration::from_millis(self.body_read_timeout_ms),
            max_connections: usize::try_from(self.max_connections).unwrap_or(usize::MAX),
            drain: Duration::from_millis(self.shutdown_drain_ms),
        }
    }
}

/// HTTPS for a service's port (`#[command(flatten)]`): with a certificate and its key the port
/// speaks TLS only; with a client CA too, a client must present a certificate signed by it.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct TlsArgs {
    /// Certificate (PEM) the port serves over TLS; unset, it speaks plain HTTP.
    #[arg(long, env = "TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<std::path::PathBuf>,

    /// Private key (PEM) of TLS_CERT_FILE.
    #[arg(long, env = "TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<std::path::PathBuf>,

    /// CA (PEM) a client's certificate must be signed by: a client without one is refused during
    /// the handshake. Only with TLS_CERT_FILE.
    #[arg(long, env = "TLS_CLIENT_CA_FILE", requires = "tls_cert_file")]
    pub tls_client_ca_file: Option<std::path::PathBuf>,
}

impl TlsArgs {
    /// The server configuration these settings give, `None` for plain HTTP.
    pub fn server_config(
        &self,
    ) -> Result<Option<Arc<rustls::ServerConfig>>, service_common::tls::TlsError> {
        match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert), Some(key)) => {
                service_common::tls::server_config(cert, key, self.tls_client_ca_file.as_deref())
                    .map(Some)
            }
            _ => Ok(None),
        }
    }
}

/// Serves `router` on `listener` until `shutdown` completes, then waits for the requests in
/// flight. Each request carries `ConnectInfo<SocketAddr>` of its client, as with
/// `into_make_service_with_connect_info`. A trailing slash means the same as none: it is trimmed
/// before routing (the original API's clients send both `/api/movies` and `/api/movies/`).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_tls(listener, router, limits, None, shutdown).await
}

/// [`serve`], over TLS when `tls` is given: each connection's handshake runs in its own task,
/// within the header read timeout, so a client that never finishes one holds no other back.
pub async fn serve_tls(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.connections()));
    accept_loop(
        listener,
        Connections::new(router, limits, tls),
        permits,
        None,
        shutdown,
    )
    .await;
    Ok(())
}

/// [`serve_tls`] on `threads` threads of its own, each running a single-threaded event loop that
/// accepts connections from the same listener and serves them to their end, as nginx's workers
/// do. A request is then read, proxied and answered on one thread, with no hand-over between
/// threads. Under wrk (64 connections), the gateway used 31 to 51 µs of CPU per proxied GET this
/// way, against 44 to 51 µs on tokio's multi-threaded runtime: the less, the fewer threads its
/// connections happened to spread over, as a thread with more to do sleeps less often between
/// two requests (0.13 voluntary context switches per request with all on one thread, 0.74 with
/// them spread over two). So the first thread always takes new connections and each other one
/// only while the thread before it is busy; a thread too busy hands connections over (see
/// `spread`). [`Limits::max_connections`] bounds all threads together.
/// Tasks a handler spawns run on its thread; [`serving_thread`] tells which one it is. `first`
/// says where the first thread runs: on a thread of its own, or on the caller's.
/// Returns once `shutdown` has completed and every thread has drained its connections.
pub async fn serve_on_threads(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    tls: Option<Arc<rustls::ServerConfig>>,
    threads: NonZeroUsize,
    first: FirstThread,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let spread = spread::Threads::new(threads.get(), spread::Thresholds::DEFAULT);
    serve_spread(listener, router, limits, tls, spread, first, shutdown).await
}

/// Where the first of [`serve_on_threads`]' threads runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstThread {
    /// A thread of its own, as every other one.
    Own,
    /// The caller's, whose runtime must then be single-threaded (an error otherwise). The tasks
    /// the caller runs beside the server share that thread with the connections the first
    /// thread serves, and wake them, and are woken by them, without crossing threads: the
    /// gateway's broker connection, which every order goes through. A task there that blocks
    /// its thread blocks those connections too.
    Caller,
}

/// [`serve_on_threads`] on the threads of `spread`, whose thresholds tests choose.
async fn serve_spread(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    tls: Option<Arc<rustls::ServerConfig>>,
    spread: Arc<spread::Threads>,
    first: FirstThread,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if first == FirstThread::Caller
        && tokio::runtime::Handle::current().runtime_flavor()
            != tokio::runtime::RuntimeFlavor::CurrentThread
    {
        return Err(std::io::Error::other(
            "the first serving thread can be the caller's only on a single-threaded runtime",
        ));
    }
    let listener = listener.into_std()?;
    let permits = Arc::new(Semaphore::new(limits.connections()));
    let connections = Connections::new(router, limits, tls);
    let stop = tokio_util::sync::CancellationToken::new();
    // Should a thread fail to start, those already serving stop as this returns the error.
    let _stop_on_error = stop.clone().drop_guard();
    let (ended, mut endings) = tokio::sync::mpsc::unbounded_channel();
    for index in 0..spread.count() {
        let listener = listener.try_clone()?;
        let (connections, permits, stop) = (connections.clone(), permits.clone(), stop.clone());
        let spread = spread.clone();
        let ending = Ending {
            index,
            served: Err(std::io::Error::other("it panicked")),
            ended: ended.clone(),
        };
        // Run on the serving thread itself, wherever that is.
        let serve = async move {
            spread.register(index);
            let listener = TcpListener::from_std(listener)?;
            let stop = stop.cancelled_owned();
            accept_loop(listener, connections, permits, Some((spread, index)), stop).await;
            Ok(())
        };
        if index == 0 && first == FirstThread::Caller {
            // A task of the caller's runtime, so on the caller's thread, which `serving_thread`
            // already calls 0.
            tokio::spawn(async move {
                // As on a thread of its own: the whole report moves in.
                let mut ending = ending;
                ending.served = serve.await;
            });
            continue;
        }
        std::thread::Builder::new()
            .name(format!("http-{index}"))
            .spawn(move || {
                // The whole report moves in, not just the field written: it is sent when dropped.
                let mut ending = ending;
                SERVING_THREAD.with(|thread| thread.set(index));
                ending.served = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .and_then(|runtime| runtime.block_on(serve));
            })?;
    }
    drop((listener, ended));
    // A thread ends before shutdown only on an error: then the others stop too, and the service
    // exits with it rather than serve on fewer threads.
    let mut outcome = tokio::select! {
        () = shutdown => Ok(()),
        Some((index, served)) = endings.recv() => Err(std::io::Error::other(format!(
            "serving thread {index} ended: {}",
            served.err().map_or_else(|| "without an error".to_owned(), |err| err.to_string())
        ))),
    };
    stop.cancel();
    while let Some((index, served)) = endings.recv().await {
        if let (Ok(()), Err(err)) = (&outcome, served) {
            outcome = Err(std::io::Error::other(format!(
                "serving thread {index}: {err}"
            )));
        }
    }
    outcome
}

/// What a thread of [`serve_on_threads`] reports as it ends, even by a panic (it is sent when
/// dropped).
struct Ending {
    index: usize,
    served: std::io::Result<()>,
    ended: tokio::sync::mpsc::UnboundedSender<(usize, std::io::Result<()>)>,
}

impl Drop for Ending {
    fn drop(&mut self) {
        let served = std::mem::replace(&mut self.served, Ok(()));
        let _ = self.ended.send((self.index, served));
    }
}

thread_local! {
    static SERVING_THREAD: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Which of [`serve_on_threads`]'s threads runs the caller, from 0; 0 on any other thread. What
/// a handler keeps per thread (the gateway's idle upstream connections) is indexed by it.
pub fn serving_thread() -> usize {
    SERVING_THREAD.with(std::cell::Cell::get)
}

/// How each accepted connection is served: the application and hyper's settings, shared by every
/// accept loop.
#[derive(Clone)]
struct Connections {
    app: tower_http::normalize_path::NormalizePath<Router>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    limits: Limits,
}

impl Connections {
    fn new(router: Router, limits: Limits, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        let app = tower_http::normalize_path::NormalizePath::trim_trailing_slash(router);
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout);
        Self {
            app,
            builder: Arc::new(builder),
            acceptor,
            limits,
        }
    }
}

/// Accepts connections from `listener` and serves each in a task of its own, a permit of
/// `permits` each, until `shutdown` completes; then drains them (see the module's doc). `spread`
/// is the serving threads and this one's index, when there are several (see `spread`).
async fn accept_loop(
    listener: TcpListener,
    connections: Connections,
    permits: Arc<Semaphore>,
    spread: Option<(Arc<spread::Threads>, usize)>,
    shutdown: impl Future<Output = ()>,
) {
    let Connections {
        app,
        builder,
        acceptor,
        limits,
    } = connections;
    let max_connections = limits.connections();
    let draining = Arc::new(AtomicBool::new(false));
    let graceful = GracefulShutdown::new();
    let mut gate = spread
        .as_ref()
        .and_then(|(threads, index)| spread::Gate::new(threads.clone(), *index));
    tokio::pin!(shutdown);
    loop {
        let (permit, stream, remote) = tokio::select! {
            () = &mut shutdown => break,
            next = next_connection(&listener, &permits, gate.as_mut()) => next,
        };
        // Each answer leaves at once, as nginx's `tcp_nodelay` does on kept-alive connections.
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(%remote, error = %err, "cannot set TCP_NODELAY");
        }
        let (app, draining) = (app.clone(), draining.clone());
        let spread = spread.clone();
        let service = tower::service_fn(move |request: Request<Incoming>| {
            let (app, draining) = (app.clone(), draining.clone());
            let http1 = request.version() < Version::HTTP_2;
            let hand_over = http1
                && spread
                    .as_ref()
                    .is_some_and(|(threads, index)| threads.hand_over(*index));
            async move {
                // A body the answer leaves unread (a 413 refused on its length, a 401) is read on
                // and thrown away (see `ReadToEnd`), then the connection closes. The answer says
                // so, or a client that sent the whole body would send its next request on it.
                let ended = request.body().is_end_stream();
                let body_read = (http1 && !ended).then(|| Arc::new(AtomicBool::new(false)));
                // A body still to come may pause at most `body_read_timeout` between two pieces
                // (`PauseTimeout`, whose error `is_body_timeout` recognises). A request without
                // one keeps its plain body, which says it has ended: a handler then reads nothing
                // and arms no timer.
                let body_read_timeout = limits.body_read_timeout;
                let mut request = request.map(|body| match &body_read {
                    None if ended => axum::body::Body::new(body),
                    Some(read) => axum::body::Body::new(PauseTimeout::new(
                        ReadToEnd {
                            body: Some(body),
                            read: read.clone(),
                        },
                        body_read_timeout,
                    )),
                    None => axum::body::Body::new(PauseTimeout::new(body, body_read_timeout)),
                });
                request.extensions_mut().insert(ConnectInfo(remote));
                let mut response = app.oneshot(request).await?;
                let unread = body_read.is_some_and(|read| !read.load(Ordering::Relaxed));
                // HTTP/2 has no such header: its connections get a GOAWAY on shutdown.
                if http1 && (unread || hand_over || draining.load(Ordering::Relaxed)) {
                    response
                        .headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        let service = TowerToHyperService::new(service);
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let served = match acceptor {
                None => {
                    let connection =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    watcher.watch(connection.into_owned()).await
                }
                Some(acceptor) => {
                    match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(stream)) => {
                            let connection = builder
                                .serve_connection_with_upgrades(TokioIo::new(stream), service);
                            watcher.watch(connection.into_owned()).await
                        }
                        Ok(Err(err)) => {
                            tracing::info!(%remote, error = %err, "TLS handshake refused");
                            Ok(())
                        }
                        Err(_) => {
                            tracing::debug!(%remote, "TLS handshake timed out");
                            Ok(())
                        }
                    }
                }
            };
            if let Err(err) = served {
                tracing::debug!(%remote, error = %err, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    // Each open connection closes after its next answer; wait for them, up to the drain time.
    draining.store(true, Ordering::Relaxed);
    let deadline = tokio::time::Instant::now() + limits.drain;
    while permits.available_permits() < max_connections && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    graceful.shutdown().await;
}

/// The next connection from `listener` and its permit of `permits`. A thread with a `gate` takes
/// neither while its gate is closed, so a permit never waits with a thread that may not accept.
async fn next_connection(
    listener: &TcpListener,
    permits: &Arc<Semaphore>,
    mut gate: Option<&mut spread::Gate>,
) -> (OwnedSemaphorePermit, TcpStream, SocketAddr) {
    loop {
        if let Some(gate) = gate.as_deref_mut() {
            while !gate.open() {
                tokio::time::sleep(spread::SAMPLE).await;
            }
        }
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        // `None` when the gate closed first: the permit goes back.
        let accepted = match gate.as_deref_mut() {
            None => Some(listener.accept().await),
            Some(gate) => loop {
                tokio::select! {
                    accepted = listener.accept() => break Some(accepted),
                    () = tokio::time::sleep(spread::SAMPLE) => if !gate.open() {
                        break None;
                    },
                }
            },
        };
        match accepted {
            None => {}
            Some(Ok((stream, remote))) => return (permit, stream, remote),
            Some(Err(err)) => {
                // Out of file descriptors and the like: pause rather than spin.
                tracing::warn!(error = %err, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A request body that records when it has been read to its end. One dropped before its end is
/// read on to its end and thrown away, for up to [`LINGER`] and as long as a piece comes every
/// [`LINGER_IDLE`], as nginx's lingering close does: a client still sending a body the answer
/// refused (a 413 on its length) then reads the answer, instead of having its connection reset
/// under the body it writes. A client that stopped sending is not waited for.
struct ReadToEnd {
    body: Option<Incoming>,
    read: Arc<AtomicBool>,
}

/// How long a refused body is read on and thrown away before its connection closes anyway.
const LINGER: Duration = Duration::from_secs(5);
/// The longest pause in a refused body while it is thrown away.
const LINGER_IDLE: Duration = Duration::from_millis(500);

impl hyper::body::Body for ReadToEnd {
    type Data = axum::body::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let Some(body) = self.body.as_mut() else {
            return std::task::Poll::Ready(None);
        };
        let frame = std::task::ready!(std::pin::Pin::new(&mut *body).poll_frame(cx));
        if frame.is_none() || body.is_end_stream() {
            self.read.store(true, Ordering::Relaxed);
        }
        std::task::Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(Incoming::is_end_stream)
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body
            .as_ref()
            .map_or_else(|| hyper::body::SizeHint::with_exact(0), Incoming::size_hint)
    }
}

impl Drop for ReadToEnd {
    fn drop(&mut self) {
        let Some(mut body) = self.body.take() else {
            return;
        };
        if self.read.load(Ordering::Relaxed) || body.is_end_stream() {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = tokio::time::timeout(LINGER, async {
                    loop {
                        let frame =
                            std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx));
                        match tokio::time::timeout(LINGER_IDLE, frame).await {
                            Ok(Some(Ok(_))) => {}
                            _ => break,
                        }
                    }
                })
                .await;
            });
        }
    }
}

/// Whether a body error is the body read timeout of [`serve`] (a client that stopped sending).
pub fn is_body_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(current) = source {
        if current.is::<pause::Paused>() {
            return true;
        }
        source = current.source();
    }
    false
}

/// The client address of a request served by [`serve`].
pub fn client_address(request: &Request) -> Option<SocketAddr> {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(address)| *address)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::sync::{oneshot, watch};

    /// `/thread` answers which serving thread ran it, the name of its thread and that of a task it
    /// spawned; `/spin/{ms}` keeps its thread busy that long, then answers which serving thread it
    /// is; `/wait` answers once `release` says true.
    fn app(release: watch::Receiver<bool>) -> Router {
        Router::new()
            .route(
                "/spin/{ms}",
                get(
                    |axum::extract::Path(ms): axum::extract::Path<u64>| async move {
                        let end = std::time::Instant::now() + Duration::from_millis(ms);
                        while std::time::Instant::now() < end {
                            std::hint::spin_loop();
                        }
                        serving_thread().to_string()
                    },
                ),
            )
            .route(
                "/thread",
                get(|| async {
                    let name = || std::thread::current().name().map(str::to_owned);
                    let spawned = tokio::spawn(async move { name() }).await.expect("the task");
                    format!("{} {:?} {:?}", serving_thread(), name(), spawned)
                }),
            )
            .route(
                "/refuse",
                axum::routing::post(|| async { StatusCode::PAYLOAD_TOO_LARGE }),
            )
            .route(
                "/read",
                axum::routing::post(|body: String| async move { body }),
            )
            .route(
                "/ended",
                axum::routing::any(|request: Request| async move {
                    request.body().is_end_stream().to_string()
                }),
            )
            .route(
                "/timed",
                axum::routing::post(|request: Request| async move {
                    match axum::body::to_bytes(request.into_body(), usize::MAX).await {
                        Ok(body) => format!("read {} bytes", body.len()),
                        Err(err) if is_body_timeout(&err) => "timed out".to_owned(),
                        Err(err) => format!("failed: {err}"),
                    }
                }),
            )
            .route(
                "/wait",
                get(move || {
                    let mut release = release.clone();
                    async move {
                        release
                            .wait_for(|released| *released)
                            .await
                            .expect("the sender");
                        "released"
                    }
                }),
            )
    }

    struct Served {
        address: SocketAddr,
        release: watch::Sender<bool>,
        shutdown: oneshot::Sender<()>,
        served: tokio::task::JoinHandle<std::io::Result<()>>,
    }

    async fn start(threads: usize, limits: Limits) -> Served {
        start_spread(
            threads,
            limits,
            spread::Thresholds::DEFAULT,
            FirstThread::Own,
        )
        .await
    }

    /// Thresholds a thread kept busy by `/spin` passes however busy the machine running the tests
    /// is: the defaults ask for half a core, which a loaded machine may not give it.
    const EAGER: spread::Thresholds = spread::Thresholds {
        open_at: 0.05,
        close_below: 0.02,
        hot: 0.2,
    };

    async fn start_spread(
        threads: usize,
        limits: Limits,
        thresholds: spread::Thresholds,
        first: FirstThread,
    ) -> Served {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let address = listener.local_addr().expect("its address");
        let (release, released) = watch::channel(false);
        let (shutdown, stop) = oneshot::channel();
        let served = tokio::spawn(serve_spread(
            listener,
            app(released),
            limits,
            None,
            spread::Threads::new(threads, thresholds),
            first,
            async move {
                let _ = stop.await;
            },
        ));
        Served {
            address,
            release,
            shutdown,
            served,
        }
    }

    /// Sends `GET path` on a connection of its own; the whole answer, once the server closes.
    async fn send(address: SocketAddr, path: &str) -> tokio::task::JoinHandle<String> {
        let mut stream = TcpStream::connect(address).await.expect("a connection");
        let request = format!("GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("sent");
        tokio::spawn(async move {
            let mut answer = String::new();
            stream.read_to_string(&mut answer).await.expect("an answer");
            answer
        })
    }

    /// The head of the next answer on `stream`, lowercased.
    async fn answer_head(stream: &mut TcpStream) -> String {
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0];
            stream.read_exact(&mut byte).await.expect("an answer");
            head.push(byte[0]);
        }
        String::from_utf8(head).expect("text").to_lowercase()
    }

    /// Sends `GET path` on a kept-alive `stream`; the answer's head (lowercased) and body.
    async fn ask(stream: &mut TcpStream, path: &str) -> (String, String) {
        let request = format!("GET {path} HTTP/1.1\r\nhost: test\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("sent");
        answer(stream).await
    }

    /// The next answer on `stream`: its head (lowercased) and its body.
    async fn answer(stream: &mut TcpStream) -> (String, String) {
        let head = answer_head(stream).await;
        let length = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length: "))
            .and_then(|length| length.trim().parse().ok())
            .expect("a content-length");
        let mut body = vec![0; length];
        stream.read_exact(&mut body).await.expect("the body");
        (head, String::from_utf8(body).expect("text"))
    }

    /// A connection served by thread 0. With [`EAGER`] thresholds, thread 1 may take a connection
    /// while thread 0 is only starting: such connections are left out.
    async fn on_thread_0(address: SocketAddr) -> TcpStream {
        loop {
            let mut stream = TcpStream::connect(address).await.expect("a connection");
            if ask(&mut stream, "/spin/0").await.1 == "0" {
                return stream;
            }
        }
    }

    #[tokio::test]
    async fn connections_gather_on_the_first_thread_while_it_has_room() {
        let served = start(2, Limits::default()).await;
        let mut streams = Vec::new();
        for connection in 0..6 {
            let mut stream = TcpStream::connect(served.address)
                .await
                .expect("a connection");
            let (_, body) = ask(&mut stream, "/thread").await;
            assert!(
                body.starts_with("0 "),
                "connection {connection} of a light load reached thread {body}"
            );
            streams.push(stream);
            tokio::time::sleep(spread::SAMPLE * 2).await;
        }
        served.shutdown.send(()).expect("serving");
        served.served.await.expect("joined").expect("served");
    }

    #[tokio::test]
    async fn while_a_thread_is_busy_the_next_one_takes_connections() {
        let served = start_spread(2, Limits::default(), EAGER, FirstThread::Own).await;
        let mut busy = on_thread_0(served.address).await;
        let request = "GET /spin/2000 HTTP/1.1\r\nhost: test\r\n\r\n";
        busy.write_all(request.as_bytes()).await.expect("sent");
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Thread 0 is held by the spin: only thread 1 can answer, and does long before it ends.
        let started = std::time::Instant::now();
        let mut stream = TcpStream::connect(served.address)
            .await
            .expect("a connection");
        let (_, body) = ask(&mut stream, "/spin/0").await;
        assert_eq!(body, "1");
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "not before the spin ended"
        );
        assert!(answer_head(&mut busy).await.starts_with("http/1.1 200"));
        served.shutdown.send(()).expect("serving");
        served.served.await.expect("joined").expect("served");
    }

    #[tokio::test]
    async fn a_thread_too_busy_hands_connections_over_to_one_with_room() {
        let served = start_spread(2, Limits::default(), EAGER, FirstThread::Own).await;
        // Four connections on thread 0, as a light load leaves them.
        let mut clients = Vec::new();
        for _ in 0..4 {
            clients.push(on_thread_0(served.address).await);
        }
        // Then each keeps thread 0 busy, reconnecting when an answer says the connection closes,
        // until an answer comes from thread 1.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let done = Arc::new(AtomicBool::new(false));
        let moved = clients.into_iter().map(|mut stream| {
            let (address, done) = (served.address, done.clone());
            tokio::spawn(async move {
                let mut closed = 0;
                while tokio::time::Instant::now() < deadline && !done.load(Ordering::Relaxed) {
                    let (head, body) = ask(&mut stream, "/spin/5").await;
                    if body == "1" {
                        done.store(true, Ordering::Relaxed);
                        return Some(closed);
                    }
                    if head.contains("connection: close") {
                        closed += 1;
                        stream = TcpStream::connect(address).await.expect("a connection");
                    }
                }
                None
            })
        });
        let mut handed_over = 0;
        for client in moved.collect::<Vec<_>>() {
            if let Some(closed) = client.await.expect("the client") {
                assert!(closed > 0, "a connection moved without being closed");
                handed_over += 1;
            }
        }
        assert!(
            handed_over > 0,
            "no connection moved to thread 1 within 10 s"
        );
        served.shutdown.send(()).expect("serving");
        served.served.await.expect("joined").expect("served");
    }

    /// Sends `request` on a connection of its own, waits `pause`, sends `rest`; the answer's body.
    async fn exchange(address: SocketAddr, request: &str, pause: Duration, rest: &str) -> String {
        let mut stream = TcpStream::connect(address).await.expect("a connection");
        stream.write_all(request.as_bytes()).await.expect("sent");
        tokio::time::sleep(pause).await;
        // The server may have answered and closed already.
        let _ = stream.write_all(rest.as_bytes()).await;
        answer(&mut stream).await.1
    }

    #[tokio::test]
    async fn a_request_without_a_body_says_so_and_a_body_that_stalls_times_out() {
        let limits = Limits {
            body_read_timeout: Duration::from_millis(300),
            ..Limits::default()
        };
        let served = start(1, limits).await;
        let address = served.address;
        let no_body = "GET /ended HTTP/1.1\r\nhost: test\r\n\r\n";
        assert_eq!(exchange(address, no_body, Duration::ZERO, "").await, "true");
        let with_body = "POST /ended HTTP/1.1\r\nhost: test\r\ncontent-length: 2\r\n\r\nhi";
        assert_eq!(
            exchange(address, with_body, Duration::ZERO, "").await,
            "false"
        );

        let head = "POST /timed HTTP/1.1\r\nhost: test\r\ncontent-length: 4\r\n\r\nab";
        let quick = exchange(address, head, Duration::from_millis(50), "cd").await;
        assert_eq!(quick, "read 4 bytes");
        let stalled = exchange(address, head, Duration::from_millis(900), "cd").await;
        assert_eq!(stalled, "timed out");
        served.shutdown.send(()).expect("serving");
        served.served.await.expect("joined").expect("served");
    }

    #[tokio::test]
    async fn an_answer_that_leaves_the_body_unread_says_the_connection_closes() {
        let served = start(1, Limits::default()).await;
        let mut stream = TcpStream::connect(served.address)
            .await
            .expect("a connection");
        // Part of a large body: the answer comes before the rest, which nobody will read.
        let head = "POST /refuse HTTP/1.1\r\nhost: test\r\ncontent-length: 1000000\r\n\r\n";
        stream.write_all(head.as_bytes()).await.expect("sent");
        stream.write_all(&[b'x'; 1000]).await.expect("sent");
        let answer = answer_head(&mut stream).await;
        assert!(answer.starts_with("http/1.1 413"), "{answer}");
        assert!(answer.contains("connection: close"), "{answer}");
        // The rest of the body is still taken, so the client can send it all.
        stream
            .write_all(&[b'x'; 999_000])
            .await
            .expect("the whole body is taken");
        let mut rest = Vec::new();
        stream
            .read_to_end(&mut rest)
            .await
            .expect("the connection closes");

        // A body read to its end keeps the connection: a second request is answered on it.
        let mut stream = TcpStream::connect(served.address)
            .await
            .expect("a connection");
        for _ in 0..2 {
            let request = "POST /read HTTP/1.1\r\nhost: test\r\ncontent-length: 5\r\n\r\nhello";
            stream.write_all(request.as_bytes()).await.expect("sent");
            let answer = answer_head(&mut stream).await;
            assert!(answer.starts_with("http/1.1 200"), "{answer}");
            assert!(!answer.contains("connection: close"), "{answer}");
            let mut body = [0; 5];
            stream.read_exact(&mut body).await.expect("the body");
            assert_eq!(&body, b"hello");
        }
        served.shutdown.send(()).expect("serving");
        served.served.await.expect("joined").expect("served");
    }

    /// Sends `/thread` on 20 connections: each request, and the task it spawned, ran on the first
    /// serving thread, whose thread is named `first`, or on the second one.
    async fn each_request_on_one_thread(served: Served, first: Option<String>) {
        let mut answers = Vec::new();
        for _ in 0..20 {
            answers.push(send(served.address, "/thread").await);
        }
        for answer in answers {
            let answer = answer.await.expect("the answer");
            let body = answer.rsplit("\r\n\r\n").next().expect("a body");
            assert!(
                body == format!("0 {first:?} {first:?}")
                    || body == r#"1 Some("http-1") Some("http-1")"#,
                "{answer}"
            );
        }
        served.shutdown.send(()).expect("serving");
        served.served.await.expect("joined").expect("served");
    }

    #[tokio::test]
    async fn a_request_and_the_tasks_it_spawns_run_on_one_serving_thread() {
        let served = start(2, Limits::default()).await;
        each_request_on_one_thread(served, Some("http-0".to_owned())).await;
    }

    #[tokio::test]
    async fn the_first_thread_can_be_the_callers() {
        let caller = std::thread::current().name().map(str::to_owned);
        assert_ne!(caller.as_deref(), Some("http-0"));
        let served = start_spread(
            2,
            Limits::default(),
            spread::Thresholds::DEFAULT,
            FirstThread::Caller,
        )
        .await;
        each_request_on_one_thread(served, caller).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_first_thread_is_the_callers_only_on_a_single_threaded_runtime() {
        let served = start_spread(2, Limits::default(), EAGER, FirstThread::Caller).await;
        let refused = served.served.await.expect("joined").expect_err("refused");
        assert!(refused.to_string().contains("single-threaded"), "{refused}");
    }

    #[tokio::test]
    async fn max_connections_bounds_all_threads_together() {
        let limits = Limits {
            max_connections: 2,
            ..Limits::default()
        };
        let served = start(2, limits).await;
        let waiting = [
            send(served.address, "/wait").await,
            send(served.address, "/wait").await,
        ];
        // Both permits are taken: the third connection waits to be accepted.
        let mut third = send(served.address, "/thread").await;
        assert!(
            tokio::time::timeout(Duration::from_millis(300), &mut third)
                .await
                .is_err(),
            "a third connection was served beyond MAX_CONNECTIONS"
        );
        served.release.send(true).expect("the handlers wait");
        for answer in waiting {
            assert!(answer.await.expect("the answer").ends_with("released"));
        }
        assert!(third.await.expect("the answer").starts_with("HTTP/1.1 200"));
        served.shutdown.send(()).expect("serving");
        served.served.await.expect("joined").expect("served");
    }

    #[tokio::test]
    async fn on_shutdown_every_thread_stops_accepting_and_the_request_in_flight_is_answered() {
        let served = start(2, Limits::default()).await;
        let in_flight = send(served.address, "/wait").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        served.shutdown.send(()).expect("serving");
        // The listener closes once every thread has let go of it.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(served.address).await.is_ok() {
            assert!(tokio::time::Instant::now() < deadline, "still accepting");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            !served.served.is_finished(),
            "returned with a request in flight"
        );
        served.release.send(true).expect("the handler waits");
        let answer = in_flight.await.expect("the answer");
        assert!(answer.ends_with("released"), "{answer}");
        served.served.await.expect("joined").expect("served");
    }
}

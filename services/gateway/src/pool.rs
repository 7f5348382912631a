//! Kept-alive HTTP/1.1 connections to one inventory instance, each driven by a task of its own.
//!
//! In place of hyper-util's pooled client, which keys its pool by scheme and host with SipHash,
//! and spawns a task per request to put the connection back once the answer is read: with it, a
//! proxied GET took a sixth more of the gateway's instructions (58.7k against 49.4k, callgrind). Here a connection goes back to its
//! instance's pool when the answer's body has been read to its end; an answer dropped before its
//! end closes its connection instead.
//!
//! Each serving thread ([`http_serve::serve_on_threads`]) keeps idle connections of its own: a
//! connection's task runs on the thread that opened it, so the request and its connection never
//! wake one another across threads. The most recently used connection is taken first, so the
//! ones left over from a burst go idle and are closed after [`Pool::new`]'s idle timeout. A
//! request that never left (its pooled connection turned out closed, as the instance closed it)
//! is sent on another one, whatever its method: nothing was sent.

use std::collections::VecDeque;
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{header, HeaderValue, Request, Response, Uri};
use http_body_util::Full;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::time::Instant;
use tower::ServiceExt;

use crate::config::InventoryUrl;

/// The connections of one instance.
#[derive(Debug)]
pub struct Pool {
    connector: HttpsConnector<HttpConnector>,
    /// Where the connector connects: the instance's scheme and authority.
    address: Uri,
    /// The `Host` of every request.
    host: HeaderValue,
    /// The idle connections of each serving thread, the most recently used last.
    idle: Box<[Mutex<VecDeque<Idle>>]>,
    idle_timeout: Duration,
}

#[derive(Debug)]
struct Idle {
    sender: SendRequest<Full<Bytes>>,
    since: Instant,
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be made: nothing was sent.
    #[error("cannot connect to inventory")]
    Connect(#[source] axum::BoxError),
    /// The request went out, or may have, and no answer came.
    #[error("inventory gave no answer")]
    NoAnswer(#[source] hyper::Error),
}

impl SendError {
    /// Whether nothing was sent because no connection could be made.
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Connect(_))
    }
}

impl Pool {
    /// The pool of the instance at `url`, for `threads` serving threads; `connector` makes its
    /// connections, over TLS for `https://`.
    pub fn new(
        connector: HttpsConnector<HttpConnector>,
        url: &InventoryUrl,
        idle_timeout: Duration,
        threads: NonZeroUsize,
    ) -> Result<Self, axum::http::Error> {
        Ok(Self {
            connector,
            address: url.address()?,
            host: HeaderValue::from_str(url.authority.as_str())?,
            idle: (0..threads.get())
                .map(|_| Mutex::new(VecDeque::new()))
                .collect(),
            idle_timeout,
        })
    }

    /// The idle connections of the calling thread.
    fn idle(&self) -> std::sync::MutexGuard<'_, VecDeque<Idle>> {
        self.idle[http_serve::serving_thread() % self.idle.len()]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Sends `request` (its URI in origin form, `/path?query`) on an idle connection, or a new
    /// one, and returns the answer, whose body gives the connection back once read whole.
    pub async fn send(
        self: &Arc<Self>,
        mut request: Request<Full<Bytes>>,
    ) -> Result<Response<PooledBody>, SendError> {
        request
            .headers_mut()
            .insert(header::HOST, self.host.clone());
        loop {
            let (mut sender, pooled) = match self.take_idle() {
                Some(sender) => (sender, true),
                None => (self.connect().await?, false),
            };
            // A pooled connection may still be ending its previous exchange: ready in a moment.
            // One the instance closed says so here.
            if let Err(err) = sender.ready().await {
                if pooled {
                    continue;
                }
                return Err(SendError::Connect(err.into()));
            }
            match sender.try_send_request(request).await {
                Ok(response) => {
                    return Ok(response.map(|body| PooledBody {
                        body,
                        sender: Some(sender),
                        pool: Arc::clone(self),
                    }))
                }
                Err(mut err) => match err.take_message() {
                    // Never written: the connection closed as it was taken.
                    Some(unsent) if pooled => request = unsent,
                    _ => return Err(SendError::NoAnswer(err.into_error())),
                },
            }
        }
    }

    /// The most recently used idle connection still open and not idle for too long.
    fn take_idle(&self) -> Option<SendRequest<Full<Bytes>>> {
        let mut idle = self.idle();
        while let Some(Idle { sender, since }) = idle.pop_back() {
            if !sender.is_closed() && since.elapsed() < self.idle_timeout {
                return Some(sender);
            }
        }
        None
    }

    /// Keeps `sender` for the next request, and closes those idle for longer than the timeout.
    fn put(&self, sender: SendRequest<Full<Bytes>>) {
        if sender.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut idle = self.idle();
        while idle
            .front()
            .is_some_and(|oldest| now.duration_since(oldest.since) >= self.idle_timeout)
        {
            idle.pop_front();
        }
        idle.push_back(Idle { sender, since: now });
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, SendError> {
        let stream = self
            .connector
            .clone()
            .oneshot(self.address.clone())
            .await
            .map_err(SendError::Connect)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(stream)
            .await
            .map_err(|err| SendError::Connect(err.into()))?;
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %service_common::ErrorChain(&err), "an inventory connection ended with an error");
            }
        });
        Ok(sender)
    }
}

/// An answer's body; its connection goes back to the pool once it has been read to its end.
#[derive(Debug)]
pub struct PooledBody {
    body: Incoming,
    sender: Option<SendRequest<Full<Bytes>>>,
    pool: Arc<Pool>,
}

impl PooledBody {
    fn release_if_ended(&mut self) {
        if self.body.is_end_stream() {
            if let Some(sender) = self.sender.take() {
                self.pool.put(sender);
            }
        }
    }
}

impl HttpBody for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.body).poll_frame(cx));
        match &frame {
            // The end, whether told by a last frame or none.
            None => {
                if let Some(sender) = this.sender.take() {
                    this.pool.put(sender);
                }
            }
            Some(Ok(_)) => this.release_if_ended(),
            // A broken answer: its connection is dropped, which closes it.
            Some(Err(_)) => this.sender = None,
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for PooledBody {
    /// An answer with no body (to HEAD, or a 204) may be dropped unread: its connection is fit.
    fn drop(&mut self) {
        self.release_if_ended();
    }
}

//! Kept-alive HTTP/1.1 connections to one inventory instance, used by the request's own task: it
//! writes the request ([`crate::http1`]) and reads the answer on the connection itself, which
//! goes back to its instance's pool when the answer's body has been read to its end. An answer
//! dropped before its end closes its connection instead.
//!
//! Each serving thread ([`http_serve::serve_on_threads`]) keeps idle connections of its own, so a
//! connection is only ever used on the thread whose runtime registered it. The most recently used
//! connection is taken first, so the ones left over from a burst go idle and are closed after
//! [`Pool::new`]'s idle timeout. Before an idle connection is taken, its socket is asked, without
//! waiting, whether the instance has closed it (or sent anything unasked, which also retires it):
//! a request is written only on a connection that was open a moment before. One whose request
//! could not be written whole is given up and the request sent on another, whatever its method:
//! the instance cannot have acted on a request it did not receive whole.

use std::collections::VecDeque;
use std::io;
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderValue, Method, Response};
use bytes::BytesMut;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::config::InventoryUrl;
use crate::http1::{self, Decoded, Decoder, Head};

/// How much room a read is given at least.
const READ_CHUNK: usize = 16 * 1024;
/// The most room a connection keeps for writing requests between two of them: one that carried a
/// large body gives its room back rather than hold it while idle.
const KEPT_WRITE_ROOM: usize = 64 * 1024;

/// The connections of one instance.
#[derive(Debug)]
pub struct Pool {
    /// Where connections go: the URL's host (an address, or a name resolved at each connection)
    /// and port.
    host: String,
    port: u16,
    /// For `https://`: the client and the name the certificate must bear.
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    connect_timeout: Duration,
    /// The `Host` of every request.
    host_header: HeaderValue,
    /// Put in front of every request's path.
    path_prefix: String,
    /// The idle connections of each serving thread, the most recently used last.
    idle: Box<[Mutex<VecDeque<Idle>>]>,
    idle_timeout: Duration,
}

#[derive(Debug)]
struct Idle {
    connection: Connection,
    since: Instant,
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be made: nothing was sent.
    #[error("cannot connect to inventory")]
    Connect(#[source] io::Error),
    /// The request went out, or may have, and no answer came.
    #[error("inventory gave no answer")]
    NoAnswer(#[source] io::Error),
}

impl SendError {
    /// Whether nothing was sent because no connection could be made.
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Connect(_))
    }
}

/// Why a [`Pool`] cannot be made for a URL.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("its authority is not a Host header")]
    Host(#[from] axum::http::header::InvalidHeaderValue),
    #[error("its host is not a name a TLS certificate can bear")]
    ServerName(#[from] rustls_pki_types::InvalidDnsNameError),
}

impl Pool {
    /// The pool of the instance at `url`, for `threads` serving threads; `tls` is the client of
    /// `https://` URLs (unused for the others).
    pub fn new(
        url: &InventoryUrl,
        tls: &Arc<rustls::ClientConfig>,
        connect_timeout: Duration,
        idle_timeout: Duration,
        threads: NonZeroUsize,
    ) -> Result<Self, PoolError> {
        let host = url.authority.host();
        // An IPv6 address is written in brackets in a URL, without them everywhere else.
        let host = host
            .strip_prefix('[')
            .and_then(|inner| inner.strip_suffix(']'))
            .unwrap_or(host)
            .to_owned();
        let tls = match url.https {
            true => Some((Arc::clone(tls), ServerName::try_from(host.clone())?)),
            false => None,
        };
        Ok(Self {
            port: url
                .authority
                .port_u16()
                .unwrap_or(if url.https { 443 } else { 80 }),
            host,
            tls,
            connect_timeout,
            host_header: HeaderValue::from_str(url.authority.as_str())?,
            path_prefix: url.path_prefix.clone(),
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

    /// Sends the request (`target` in origin form, `/path?query`; `fields` as
    /// [`http1::write_request`] takes them) on an idle connection, or a new one, and returns the
    /// answer, whose body gives the connection back once read whole.
    pub async fn send(
        self: &Arc<Self>,
        method: &Method,
        target: &str,
        fields: &[u8],
        body: &[u8],
    ) -> Result<Response<PooledBody>, SendError> {
        loop {
            let (mut connection, pooled) = match self.take_idle() {
                Some(connection) => (connection, true),
                // Boxed: a connection is rarely made, and its future (TLS handshake included) would
                // otherwise make every request's future as large, moved about at each step.
                None => (Box::pin(self.connect()).await?, false),
            };
            connection.write.clear();
            http1::write_request(
                &mut connection.write,
                method,
                &self.path_prefix,
                target,
                &self.host_header,
                fields,
                body,
            );
            if let Err(err) = connection.write_request().await {
                // Not received whole: the instance did nothing with it.
                if pooled {
                    continue;
                }
                return Err(SendError::NoAnswer(err));
            }
            let head = connection
                .read_head(method)
                .await
                .map_err(SendError::NoAnswer)?;
            let Head {
                status,
                headers,
                framing,
                keep_alive,
            } = head;
            let mut body = PooledBody {
                connection: Some(connection),
                decoder: Decoder::new(framing),
                keep_alive,
                pool: Arc::clone(self),
            };
            body.release_if_ended();
            let mut response = Response::new(body);
            *response.status_mut() = status;
            *response.headers_mut() = headers;
            return Ok(response);
        }
    }

    /// The most recently used idle connection still open and not idle for too long.
    fn take_idle(&self) -> Option<Connection> {
        let mut idle = self.idle();
        while let Some(Idle { connection, since }) = idle.pop_back() {
            if since.elapsed() < self.idle_timeout && connection.is_open() {
                return Some(connection);
            }
        }
        None
    }

    /// Keeps `connection` for the next request, and closes those idle for longer than the
    /// timeout.
    fn put(&self, connection: Connection) {
        let now = Instant::now();
        let mut idle = self.idle();
        while idle
            .front()
            .is_some_and(|oldest| now.duration_since(oldest.since) >= self.idle_timeout)
        {
            idle.pop_front();
        }
        idle.push_back(Idle {
            connection,
            since: now,
        });
    }

    /// A new connection, TLS handshake included, within the connect timeout.
    async fn connect(&self) -> Result<Connection, SendError> {
        let stream = tokio::time::timeout(self.connect_timeout, self.open())
            .await
            .unwrap_or_else(|_| {
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no connection within {:?}", self.connect_timeout),
                ))
            })
            .map_err(SendError::Connect)?;
        Ok(Connection {
            stream,
            read: BytesMut::new(),
            write: Vec::new(),
        })
    }

    /// Connects to the host's addresses in turn until one accepts.
    async fn open(&self) -> io::Result<Stream> {
        let mut last_error = None;
        let mut tcp = None;
        for address in tokio::net::lookup_host((self.host.as_str(), self.port)).await? {
            match TcpStream::connect(address).await {
                Ok(stream) => {
                    tcp = Some(stream);
                    break;
                }
                Err(err) => last_error = Some(err),
            }
        }
        let tcp = match (tcp, last_error) {
            (Some(tcp), _) => tcp,
            (None, Some(err)) => return Err(err),
            (None, None) => {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{} has no address", self.host),
                ))
            }
        };
        tcp.set_nodelay(true)?;
        Ok(match &self.tls {
            None => Stream::Plain(tcp),
            Some((tls, name)) => {
                let connector = TlsConnector::from(Arc::clone(tls));
                Stream::Tls(Box::new(connector.connect(name.clone(), tcp).await?))
            }
        })
    }
}

/// One connection and its buffers.
#[derive(Debug)]
struct Connection {
    stream: Stream,
    /// What has been read and not yet taken.
    read: BytesMut,
    /// The request being written; kept for its room.
    write: Vec<u8>,
}

impl Connection {
    /// Whether the instance has not closed the connection, nor sent anything unasked. Asks the
    /// socket without waiting, and only when the runtime has seen it become readable.
    fn is_open(&self) -> bool {
        let tcp = match &self.stream {
            Stream::Plain(tcp) => tcp,
            // Whatever arrives on an idle TLS connection (a close_notify, most likely) retires it
            // just as well unread.
            Stream::Tls(tls) => tls.get_ref().0,
        };
        matches!(tcp.try_read(&mut [0_u8; 1]), Err(err) if err.kind() == io::ErrorKind::WouldBlock)
    }

    async fn write_request(&mut self) -> io::Result<()> {
        self.stream.write_all(&self.write).await?;
        if self.write.capacity() > KEPT_WRITE_ROOM {
            self.write = Vec::new();
        }
        self.stream.flush().await
    }

    async fn read_head(&mut self, method: &Method) -> io::Result<Head> {
        loop {
            if !self.read.is_empty() {
                if let Some(head) = http1::take_head(&mut self.read, method)? {
                    return Ok(head);
                }
            }
            self.read.reserve(READ_CHUNK);
            if self.stream.read_buf(&mut self.read).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    match self.read.is_empty() {
                        true => "inventory closed the connection without answering",
                        false => {
                            "inventory closed the connection in the middle of its answer's head"
                        }
                    },
                ));
            }
        }
    }
}

/// A connection, over TLS or not.
#[derive(Debug)]
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}

/// An answer's body, read off its connection as it is polled; the connection goes back to the
/// pool once the body has been read to its end, if the instance keeps it open.
#[derive(Debug)]
pub struct PooledBody {
    /// `None` once given back, or dropped after an error or the connection's end.
    connection: Option<Connection>,
    decoder: Decoder,
    keep_alive: bool,
    pool: Arc<Pool>,
}

impl PooledBody {
    /// Gives the connection back once the body is read whole, unless the instance closes it or
    /// sent more than the answer.
    fn release_if_ended(&mut self) {
        if self.decoder != Decoder::Done {
            return;
        }
        if let Some(connection) = self.connection.take() {
            if self.keep_alive && connection.read.is_empty() {
                self.pool.put(connection);
            }
        }
    }
}

impl HttpBody for PooledBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        loop {
            let Some(connection) = this.connection.as_mut() else {
                return Poll::Ready(None);
            };
            let decoded = this.decoder.decode(&mut connection.read);
            match decoded {
                Ok(Decoded::Data(data)) => {
                    this.release_if_ended();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Decoded::Done) => {
                    this.release_if_ended();
                    return Poll::Ready(None);
                }
                Ok(Decoded::NeedMore) => {}
                Err(err) => {
                    this.connection = None;
                    return Poll::Ready(Some(Err(err)));
                }
            }
            connection.read.reserve(READ_CHUNK);
            let read = ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut connection.stream),
                cx,
                &mut connection.read
            ));
            match read {
                Ok(0) if this.decoder == Decoder::UntilClose => {
                    this.decoder = Decoder::Done;
                    this.connection = None;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    this.connection = None;
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "inventory closed the connection in the middle of its answer",
                    ))));
                }
                Ok(_) => {}
                Err(err) => {
                    this.connection = None;
                    return Poll::Ready(Some(Err(err)));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.decoder == Decoder::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder.remaining() {
            Some(left) => SizeHint::with_exact(left),
            None => SizeHint::default(),
        }
    }
}

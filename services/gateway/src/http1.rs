//! HTTP/1.1 as the gateway speaks it to inventory: a request written whole from what the proxy
//! holds (it has read the client's body before sending), an answer's head parsed by `httparse`,
//! and its body delimited by `Content-Length`, by chunks, or by the connection's end (RFC 9112
//! §6.3).
//!
//! The gateway's client side used to be hyper's: each connection had a task of its own, and a
//! request went to it, and its answer came back, through channels, so every proxied request woke
//! two tasks twice. Here the request's own task writes the request and reads the answer.

use std::io;
use std::mem::MaybeUninit;

use axum::body::Bytes;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use bytes::{Buf, BytesMut};

/// The largest answer head taken; inventory's are a few hundred bytes.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// The most header fields taken in one answer.
const MAX_HEADERS: usize = 100;
/// The longest chunk-size line (extensions included), and the most trailer bytes, taken.
const MAX_CHUNK_LINE: usize = 4096;
const MAX_TRAILER_BYTES: usize = 64 * 1024;

/// An answer that is not HTTP/1.1 as RFC 9112 writes it.
pub fn malformed(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// Writes the request into `out`: request line, `Host`, `fields` (header lines, each ending in
/// CRLF, neither `Host` nor `Content-Length` among them), `Content-Length` where there is a body
/// or the method expects one, and the body. `target` is written after `prefix` (the instance's
/// path prefix, often empty).
pub fn write_request(
    out: &mut Vec<u8>,
    method: &Method,
    prefix: &str,
    target: &str,
    host: &HeaderValue,
    fields: &[u8],
    body: &[u8],
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(prefix.as_bytes());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(fields);
    if !body.is_empty() || matches!(*method, Method::POST | Method::PUT | Method::PATCH) {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// How the body of an answer ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// After this many more bytes (0: no body).
    Length(u64),
    /// After the last chunk and the trailers.
    Chunked,
    /// When the instance closes the connection.
    UntilClose,
}

/// A final answer's head.
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub framing: Framing,
    /// Whether the connection may carry another request once the body has been read.
    pub keep_alive: bool,
}

/// Takes an answer head off the front of `buffer`: `None` while it is incomplete. Interim (1xx)
/// answers are taken off and skipped.
pub fn take_head(buffer: &mut BytesMut, method: &Method) -> io::Result<Option<Head>> {
    loop {
        // Left uninitialised: httparse writes those it fills (100 empty ones cost more to write
        // than a short head does to parse).
        let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut answer = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut answer,
            buffer,
            &mut fields,
        );
        let length = match parsed {
            Ok(httparse::Status::Complete(length)) => length,
            Ok(httparse::Status::Partial) if buffer.len() > MAX_HEAD_BYTES => {
                return Err(malformed(format!(
                    "inventory's answer head is longer than {MAX_HEAD_BYTES} bytes"
                )))
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(err) => {
                return Err(malformed(format!(
                    "inventory's answer is not HTTP/1.1: {err}"
                )))
            }
        };
        let code = answer.code.unwrap_or_default();
        let status = StatusCode::from_u16(code)
            .map_err(|_| malformed(format!("inventory answered with status {code}")))?;
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(malformed(
                "inventory switched protocols, which was not asked for",
            ));
        }
        if status.is_informational() {
            buffer.advance(length);
            continue;
        }
        let http10 = answer.version == Some(0);
        let mut headers = HeaderMap::with_capacity(answer.headers.len());
        let mut length_field: Option<u64> = None;
        // Whether Transfer-Encoding was sent, and whether its last coding is chunked.
        let (mut coded, mut chunked) = (false, false);
        let mut close = http10;
        for field in answer.headers.iter() {
            let name = HeaderName::from_bytes(field.name.as_bytes()).map_err(|_| {
                malformed(format!("inventory sent a header named {:?}", field.name))
            })?;
            let value = HeaderValue::from_bytes(field.value).map_err(|_| {
                malformed(format!("inventory's {name} header is not a header value"))
            })?;
            if name == header::CONTENT_LENGTH {
                let parsed = value
                    .to_str()
                    .ok()
                    .and_then(|text| text.trim().parse::<u64>().ok())
                    .ok_or_else(|| malformed("inventory's Content-Length is not a number"))?;
                if length_field.is_some_and(|earlier| earlier != parsed) {
                    return Err(malformed(
                        "inventory sent two different Content-Length headers",
                    ));
                }
                length_field = Some(parsed);
            } else if name == header::TRANSFER_ENCODING {
                // Only the last coding tells the framing; anything but chunked there is read until
                // the connection ends.
                coded = true;
                chunked = value
                    .to_str()
                    .ok()
                    .and_then(|text| text.rsplit(',').next())
                    .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
            } else if name == header::CONNECTION {
                for option in value.to_str().unwrap_or_default().split(',') {
                    if option.trim().eq_ignore_ascii_case("close") {
                        close = true;
                    } else if option.trim().eq_ignore_ascii_case("keep-alive") && http10 {
                        close = false;
                    }
                }
            }
            headers.append(name, value);
        }
        let framing = if *method == Method::HEAD
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            Framing::Length(0)
        } else if coded {
            // Transfer-Encoding overrides Content-Length (RFC 9112 §6.3).
            if chunked {
                Framing::Chunked
            } else {
                Framing::UntilClose
            }
        } else if let Some(length) = length_field {
            Framing::Length(length)
        } else {
            Framing::UntilClose
        };
        buffer.advance(length);
        return Ok(Some(Head {
            status,
            headers,
            framing,
            keep_alive: !close && framing != Framing::UntilClose,
        }));
    }
}

/// Where a body being read stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoder {
    /// This many bytes of content are left, then the end.
    Length(u64),
    /// A chunk-size line is next.
    ChunkSize,
    /// This many bytes of the current chunk are left, then its CRLF.
    ChunkData(u64),
    /// The CRLF that ends a chunk's data.
    ChunkEnd,
    /// Trailer fields (discarded) up to the empty line; the count is of those already taken.
    Trailers(usize),
    /// Content until the connection ends.
    UntilClose,
    /// The body has been read whole.
    Done,
}

/// What [`Decoder::decode`] found in the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    Data(Bytes),
    /// More bytes are needed.
    NeedMore,
    Done,
}

impl Decoder {
    pub fn new(framing: Framing) -> Self {
        match framing {
            Framing::Length(0) => Self::Done,
            Framing::Length(length) => Self::Length(length),
            Framing::Chunked => Self::ChunkSize,
            Framing::UntilClose => Self::UntilClose,
        }
    }

    /// The content bytes still to come, when known.
    pub fn remaining(&self) -> Option<u64> {
        match self {
            Self::Length(left) => Some(*left),
            Self::Done => Some(0),
            _ => None,
        }
    }

    /// Takes the next piece of content, or framing, off the front of `buffer`.
    pub fn decode(&mut self, buffer: &mut BytesMut) -> io::Result<Decoded> {
        loop {
            match *self {
                Self::Done => return Ok(Decoded::Done),
                Self::Length(_) | Self::ChunkData(_) | Self::UntilClose if buffer.is_empty() => {
                    return Ok(Decoded::NeedMore)
                }
                Self::Length(left) => {
                    let data = take_up_to(buffer, left);
                    *self = match left - data.len() as u64 {
                        0 => Self::Done,
                        rest => Self::Length(rest),
                    };
                    return Ok(Decoded::Data(data));
                }
                Self::ChunkData(left) => {
                    let data = take_up_to(buffer, left);
                    *self = match left - data.len() as u64 {
                        0 => Self::ChunkEnd,
                        rest => Self::ChunkData(rest),
                    };
                    return Ok(Decoded::Data(data));
                }
                Self::UntilClose => return Ok(Decoded::Data(buffer.split().freeze())),
                Self::ChunkSize => {
                    let Some(line) = take_line(buffer, MAX_CHUNK_LINE, "chunk-size line")? else {
                        return Ok(Decoded::NeedMore);
                    };
                    let size = chunk_size(&line)?;
                    *self = if size == 0 {
                        Self::Trailers(0)
                    } else {
                        Self::ChunkData(size)
                    };
                }
                Self::ChunkEnd => {
                    if buffer.len() < 2 {
                        return Ok(Decoded::NeedMore);
                    }
                    if &buffer[..2] != b"\r\n" {
                        return Err(malformed(
                            "a chunk of inventory's answer does not end with CRLF",
                        ));
                    }
                    buffer.advance(2);
                    *self = Self::ChunkSize;
                }
                Self::Trailers(taken) => {
                    let room = MAX_TRAILER_BYTES.saturating_sub(taken);
                    let Some(line) = take_line(buffer, room, "trailer section")? else {
                        return Ok(Decoded::NeedMore);
                    };
                    *self = if line.is_empty() {
                        Self::Done
                    } else {
                        Self::Trailers(taken + line.len() + 2)
                    };
                }
            }
        }
    }
}

/// At most `limit` bytes off the front of a non-empty `buffer`.
fn take_up_to(buffer: &mut BytesMut, limit: u64) -> Bytes {
    let count = usize::try_from(limit)
        .unwrap_or(usize::MAX)
        .min(buffer.len());
    buffer.split_to(count).freeze()
}

/// The line at the front of `buffer`, without its CRLF, once it is all there.
fn take_line(buffer: &mut BytesMut, limit: usize, what: &str) -> io::Result<Option<BytesMut>> {
    match buffer.iter().position(|&byte| byte == b'\n') {
        Some(end) if end > limit => Err(malformed(format!(
            "inventory's {what} is longer than {limit} bytes"
        ))),
        Some(end) => {
            let mut line = buffer.split_to(end + 1);
            line.truncate(end);
            if line.last() != Some(&b'\r') {
                return Err(malformed(format!(
                    "inventory's {what} does not end with CRLF"
                )));
            }
            line.truncate(end - 1);
            Ok(Some(line))
        }
        None if buffer.len() > limit => Err(malformed(format!(
            "inventory's {what} is longer than {limit} bytes"
        ))),
        None => Ok(None),
    }
}

/// The size of a chunk-size line (hexadecimal, extensions ignored).
fn chunk_size(line: &[u8]) -> io::Result<u64> {
    let digits = line
        .split(|&byte| byte == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    let invalid = || malformed("inventory sent a chunk size that is not a hexadecimal number");
    if digits.is_empty() || digits.len() > 15 {
        return Err(invalid());
    }
    digits.iter().try_fold(0_u64, |size, &digit| {
        let value = (digit as char).to_digit(16).ok_or_else(invalid)?;
        Ok(size * 16 + u64::from(value))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(bytes: &[u8], method: &Method) -> io::Result<Option<Head>> {
        take_head(&mut BytesMut::from(bytes), method)
    }

    /// The head of `bytes`, which must be a valid and complete one.
    fn complete(bytes: &[u8], method: &Method) -> Head {
        head(bytes, method).expect("valid").expect("complete")
    }

    /// Decodes `wire` fed in pieces of `step` bytes; the content, and whether it ended.
    fn decode_in_pieces(framing: Framing, wire: &[u8], step: usize) -> io::Result<(Vec<u8>, bool)> {
        let mut decoder = Decoder::new(framing);
        let mut buffer = BytesMut::new();
        let mut content = Vec::new();
        let mut pieces = wire.chunks(step);
        loop {
            match decoder.decode(&mut buffer)? {
                Decoded::Data(data) => content.extend_from_slice(&data),
                Decoded::Done => return Ok((content, true)),
                Decoded::NeedMore => match pieces.next() {
                    Some(piece) => buffer.extend_from_slice(piece),
                    None => return Ok((content, false)),
                },
            }
        }
    }

    #[test]
    fn a_request_is_written_with_host_fields_length_and_body() {
        let mut out = Vec::new();
        let host = HeaderValue::from_static("10.0.0.11:8081");
        write_request(
            &mut out,
            &Method::PUT,
            "/v1",
            "/api/movies/3?x=1",
            &host,
            b"x-request-id: abc\r\n",
            b"{}",
        );
        assert_eq!(
            out,
            b"PUT /v1/api/movies/3?x=1 HTTP/1.1\r\nhost: 10.0.0.11:8081\r\nx-request-id: abc\r\ncontent-length: 2\r\n\r\n{}"
        );
        out.clear();
        write_request(&mut out, &Method::GET, "", "/api/movies", &host, b"", b"");
        assert_eq!(
            out,
            b"GET /api/movies HTTP/1.1\r\nhost: 10.0.0.11:8081\r\n\r\n"
        );
        out.clear();
        write_request(&mut out, &Method::POST, "", "/x", &host, b"", b"");
        assert!(out.ends_with(b"content-length: 0\r\n\r\n"));
    }

    #[test]
    fn heads_tell_how_their_bodies_end() {
        let get = Method::GET;
        let answer = complete(
            b"HTTP/1.1 200 OK\r\ncontent-length: 12\r\ncontent-type: a/b\r\n\r\n",
            &get,
        );
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.framing, Framing::Length(12));
        assert!(answer.keep_alive);
        assert_eq!(answer.headers["content-type"], "a/b");

        let answer = complete(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\ncontent-length: 3\r\n\r\n",
            &get,
        );
        assert_eq!(answer.framing, Framing::Chunked);

        let answer = complete(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n", &get);
        assert_eq!(answer.framing, Framing::UntilClose);
        assert!(!answer.keep_alive);

        let answer = complete(
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\n",
            &get,
        );
        assert!(!answer.keep_alive);

        let answer = complete(b"HTTP/1.0 200 OK\r\ncontent-length: 5\r\n\r\n", &get);
        assert!(!answer.keep_alive);
        let answer = complete(
            b"HTTP/1.0 200 OK\r\ncontent-length: 5\r\nconnection: keep-alive\r\n\r\n",
            &get,
        );
        assert!(answer.keep_alive);

        for (status, method) in [
            ("204 No Content", &get),
            ("304 Not Modified", &get),
            ("200 OK", &Method::HEAD),
        ] {
            let wire = format!("HTTP/1.1 {status}\r\ncontent-length: 40\r\n\r\n");
            let answer = complete(wire.as_bytes(), method);
            assert_eq!(answer.framing, Framing::Length(0), "{status} to {method}");
            assert!(answer.keep_alive);
        }
    }

    #[test]
    fn interim_answers_are_skipped_and_a_partial_head_waits() {
        let mut buffer = BytesMut::from(
            &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\n{}"[..],
        );
        let answer = take_head(&mut buffer, &Method::POST)
            .expect("valid")
            .expect("complete");
        assert_eq!(answer.status, StatusCode::CREATED);
        assert_eq!(&buffer[..], b"{}");

        let mut buffer = BytesMut::from(&b"HTTP/1.1 200 OK\r\ncontent-le"[..]);
        assert!(take_head(&mut buffer, &Method::GET)
            .expect("valid")
            .is_none());
        assert_eq!(buffer.len(), 27, "nothing is taken from a partial head");
    }

    #[test]
    fn malformed_heads_are_refused() {
        for wire in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n",
            b"HTTP/1.1 099 Low\r\n\r\n",
            b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
        ] {
            let refused = head(wire, &Method::GET).expect_err(&String::from_utf8_lossy(wire));
            assert_eq!(refused.kind(), io::ErrorKind::InvalidData);
        }
        let long = format!("HTTP/1.1 200 OK\r\nx: {}", "y".repeat(MAX_HEAD_BYTES));
        assert!(head(long.as_bytes(), &Method::GET).is_err());
        // The same length twice is one length.
        let answer = complete(
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 3\r\n\r\n",
            &Method::GET,
        );
        assert_eq!(answer.framing, Framing::Length(3));
    }

    #[test]
    fn bodies_are_decoded_whatever_pieces_they_arrive_in() {
        let chunked =
            b"5;name=value\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n0\r\nx-trailer: 1\r\n\r\n";
        for step in [1, 2, 3, 7, 100] {
            assert_eq!(
                decode_in_pieces(Framing::Chunked, chunked, step).expect("valid"),
                (b"hello 0123456789".to_vec(), true),
                "pieces of {step}"
            );
            assert_eq!(
                decode_in_pieces(Framing::Length(5), b"hello", step).expect("valid"),
                (b"hello".to_vec(), true)
            );
            assert_eq!(
                decode_in_pieces(Framing::UntilClose, b"hello", step).expect("valid"),
                (b"hello".to_vec(), false)
            );
        }
        assert_eq!(
            decode_in_pieces(Framing::Length(0), b"", 1).expect("valid"),
            (vec![], true)
        );
        // A content length is not read past: what follows belongs to no one.
        let mut buffer = BytesMut::from(&b"abcdef"[..]);
        let mut decoder = Decoder::new(Framing::Length(4));
        assert_eq!(
            decoder.decode(&mut buffer).expect("valid"),
            Decoded::Data(Bytes::from_static(b"abcd"))
        );
        assert_eq!(decoder.decode(&mut buffer).expect("valid"), Decoded::Done);
        assert_eq!(&buffer[..], b"ef");
    }

    #[test]
    fn malformed_chunks_are_refused() {
        for wire in [
            &b"zz\r\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhelloXX0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"ffffffffffffffffff\r\n",
        ] {
            let refused = decode_in_pieces(Framing::Chunked, wire, 3)
                .expect_err(&String::from_utf8_lossy(wire));
            assert_eq!(refused.kind(), io::ErrorKind::InvalidData);
        }
        let endless = vec![b'1'; MAX_CHUNK_LINE + 10];
        assert!(decode_in_pieces(Framing::Chunked, &endless, 64).is_err());
    }
}

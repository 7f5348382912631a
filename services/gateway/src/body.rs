//! Reading a request body into memory within the configured limit, so that an oversized body
//! becomes the platform's JSON 413 instead of axum's plain-text one; and inventory's answer,
//! streamed on to the client, cut off when it stalls.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::http::{header, HeaderMap};
use hyper::body::{Frame, SizeHint};

use crate::error::Error;
use crate::pool::PooledBody;

/// Reads `body` whole, refusing it as soon as it is known to exceed `limit` bytes: at once when
/// `Content-Length` says so, otherwise as soon as that many bytes have arrived.
pub async fn read_limited(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, Error> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(Error::PayloadTooLarge { limit });
    }
    // A GET has no body: nothing to wait for, and no read timeout to arm.
    if body.is_end_stream() {
        return Ok(Bytes::new());
    }
    axum::body::to_bytes(body, limit).await.map_err(|err| {
        if is_length_limit(&err) {
            Error::PayloadTooLarge { limit }
        } else if http_serve::is_body_timeout(&err) {
            Error::RequestTimeout
        } else {
            Error::BadRequestBody(err)
        }
    })
}

/// Inventory's answer as the gateway streams it on: cut off once no part of it has come for
/// `timeout`. The timer is armed only while the answer keeps the gateway waiting, so an answer
/// already received (most of them) costs no timer.
#[derive(Debug)]
pub struct StallTimeout {
    body: PooledBody,
    timeout: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// The answer stalled for longer than the upstream timeout.
#[derive(Debug, thiserror::Error)]
#[error("inventory's answer stalled for longer than {0:?}")]
pub struct Stalled(Duration);

impl StallTimeout {
    pub fn new(body: PooledBody, timeout: Duration) -> Self {
        Self {
            body,
            timeout,
            sleep: None,
        }
    }
}

impl HttpBody for StallTimeout {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            this.sleep = None;
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        let timeout = this.timeout;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Stalled(timeout).into()))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

fn is_length_limit(err: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(current) = source {
        if current.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = current.source();
    }
    false
}

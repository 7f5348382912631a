//! Reading a request body into memory within the configured limit, so that an oversized body
//! becomes the platform's JSON 413 instead of axum's plain-text one.

use axum::body::{Body, Bytes, HttpBody};
use axum::http::{header, HeaderMap};

use crate::error::Error;

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

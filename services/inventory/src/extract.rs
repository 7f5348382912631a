//! Extractors wrapping axum's own so that their rejections become our [`Error`], and therefore the
//! shared JSON error body, instead of axum's plain-text answers.

use axum::extract::{FromRequest, FromRequestParts};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::Error;

/// `axum::Json`, rejecting with [`Error`]: 400 on bad syntax, 415 on a wrong content type, 413 on
/// an oversized body, 422 on well-formed JSON of the wrong shape.
#[derive(Debug, Clone, Copy, Default, FromRequest)]
#[from_request(via(axum::Json), rejection(Error))]
pub struct Json<T>(pub T);

/// `axum::extract::Path`, rejecting with [`Error`] (400 for an id that is not an integer).
#[derive(Debug, Clone, Copy, Default, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(Error))]
pub struct Path<T>(pub T);

/// `axum::extract::Query`, rejecting with [`Error`] (400). A query string that is not valid
/// percent-encoded UTF-8 (`?title=%ZZ`) is refused too, where axum would decode it leniently and
/// search for the literal text.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        if let Some(query) = parts.uri.query() {
            check_query_encoding(query)?;
        }
        let axum::extract::Query(value) =
            axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(Self(value))
    }
}

/// Every `%` starts a two-digit hex escape, and the decoded bytes are UTF-8.
fn check_query_encoding(query: &str) -> Result<(), Error> {
    let bytes = query.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|pair| std::str::from_utf8(pair).ok())
                    .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                    .ok_or_else(|| {
                        Error::InvalidQuery(format!(
                            "the query string has a `%` not followed by two hex digits at \
                             position {}",
                            i + 1
                        ))
                    })?;
                decoded.push(hex);
                i += 3;
            }
            byte => {
                decoded.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(decoded).map(drop).map_err(|_| {
        Error::InvalidQuery("the query string does not decode to UTF-8 text".to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::check_query_encoding;

    #[test]
    fn query_strings_must_be_valid_percent_encoded_utf8() {
        for good in [
            "title=alien",
            "title=100%25_off",
            "title=%C3%A9t%C3%A9",
            "title=a+b",
            "",
        ] {
            assert!(check_query_encoding(good).is_ok(), "{good}");
        }
        for bad in ["title=%ZZ", "title=%", "title=%4", "title=%FF", "title=%C3"] {
            assert!(check_query_encoding(bad).is_err(), "{bad}");
        }
    }
}

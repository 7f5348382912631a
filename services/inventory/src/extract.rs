//! Extractors wrapping axum's own so that their rejections become our [`Error`], and therefore the
//! shared JSON error body, instead of axum's plain-text answers.

use axum::extract::{FromRequest, FromRequestParts};

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

/// `axum::extract::Query`, rejecting with [`Error`] (400).
#[derive(Debug, Clone, Copy, Default, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(Error))]
pub struct Query<T>(pub T);

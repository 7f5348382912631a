//! Per-client rate limiting of the API (movies and billing; never health or readiness): each
//! client address gets `RATE_LIMIT_PER_SECOND` requests per second on average and may send
//! `RATE_LIMIT_BURST` at once (governor's GCRA, the same as a token bucket of that size). Over the
//! limit the answer is a JSON 429 with `Retry-After`, and the request goes nowhere.
//!
//! A layer of its own rather than `axum::middleware::from_fn`, which boxes the rest of the route
//! and its future for every request: with it, a proxied GET took 49.5k instructions of the
//! gateway against 47.7k (callgrind), the check itself being 0.4k of them.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use futures_util::future::{Either, Ready};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::error::Error;

/// The limiter shared by every request; cheap to clone.
#[derive(Debug, Clone)]
pub struct RateLimit {
    limiter: Arc<DefaultKeyedRateLimiter<IpAddr>>,
    per_second: NonZeroU32,
    burst: NonZeroU32,
}

impl RateLimit {
    /// `per_second` on average, `burst` at once (one second's worth when `None`).
    pub fn new(per_second: NonZeroU32, burst: Option<NonZeroU32>) -> Self {
        let burst = burst.unwrap_or(per_second);
        let quota = Quota::per_second(per_second).allow_burst(burst);
        Self {
            limiter: Arc::new(DefaultKeyedRateLimiter::keyed(quota)),
            per_second,
            burst,
        }
    }

    /// Forgets the clients whose bucket is full again, so that the table does not grow with every
    /// address ever seen; run now and then.
    pub fn forget_idle_clients(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    /// `Ok` when `client` may send a request now, else how long it must wait.
    fn check(&self, client: IpAddr) -> Result<(), Duration> {
        self.limiter
            .check_key(&client)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

impl<S> tower::Layer<S> for RateLimit {
    type Service = Limited<S>;

    fn layer(&self, inner: S) -> Limited<S> {
        Limited {
            inner,
            limit: self.clone(),
        }
    }
}

/// A route behind the limit: a request of a client over its limit is answered 429 here.
#[derive(Debug, Clone)]
pub struct Limited<S> {
    inner: S,
    limit: RateLimit,
}

impl<S> tower::Service<Request> for Limited<S>
where
    S: tower::Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let Some(client) = http_serve::client_address(&request) else {
            return Either::Left(self.inner.call(request));
        };
        match self.limit.check(client.ip()) {
            Ok(()) => Either::Left(self.inner.call(request)),
            Err(wait) => Either::Right(futures_util::future::ready(Ok(Error::RateLimited {
                client: client.ip(),
                per_second: self.limit.per_second,
                burst: self.limit.burst,
                retry_after: wait,
            }
            .into_response()))),
        }
    }
}

//! What each request gets on its way in and out, in one layer: a request id (the client's
//! `x-request-id`, or a fresh UUID v4), a span made by the service, a DEBUG line as it starts and
//! an INFO line of its answer (status and latency, in the span), and the id copied onto the answer.
//!
//! tower-http's `SetRequestId`, `Trace` and `PropagateRequestId` layers do the same in three
//! services, each boxed again by the router, and wrap every answer's body; under load that was a
//! tenth of the gateway's instructions per proxied request. This layer keeps their log lines
//! (`started processing request`, `finished processing request` with `latency` in ms and
//! `status`) but not the DEBUG `end of stream` line of each body.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use axum::http::{HeaderName, HeaderValue, Request, Response};
use tracing::Span;

/// The request and answer header holding the request id.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The layer; `make_span` gets the request with its id already set.
#[derive(Debug)]
pub struct ObserveLayer<B> {
    make_span: fn(&Request<B>) -> Span,
}

impl<B> Clone for ObserveLayer<B> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<B> Copy for ObserveLayer<B> {}

impl<B> ObserveLayer<B> {
    /// Each request in a span of `make_span`.
    pub fn new(make_span: fn(&Request<B>) -> Span) -> Self {
        Self { make_span }
    }
}

impl<S, B> tower::Layer<S> for ObserveLayer<B> {
    type Service = Observe<S, B>;

    fn layer(&self, inner: S) -> Self::Service {
        Observe {
            inner,
            make_span: self.make_span,
        }
    }
}

/// The service of [`ObserveLayer`].
#[derive(Debug)]
pub struct Observe<S, B> {
    inner: S,
    make_span: fn(&Request<B>) -> Span,
}

impl<S: Clone, B> Clone for Observe<S, B> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            make_span: self.make_span,
        }
    }
}

/// A fresh request id: a UUID v4, hyphenated.
fn fresh_request_id() -> HeaderValue {
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut text);
    HeaderValue::from_str(id).expect("a UUID is a valid header value")
}

impl<S, B, R> tower::Service<Request<B>> for Observe<S, B>
where
    S: tower::Service<Request<B>, Response = Response<R>>,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = ObserveFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let id = match request.headers().get(&REQUEST_ID) {
            Some(id) => id.clone(),
            None => {
                let id = fresh_request_id();
                request.headers_mut().insert(REQUEST_ID, id.clone());
                id
            }
        };
        let span = (self.make_span)(&request);
        let inner = {
            let _entered = span.enter();
            tracing::debug!("started processing request");
            self.inner.call(request)
        };
        ObserveFuture {
            inner,
            span,
            id: Some(id),
            started: Instant::now(),
        }
    }
}

pin_project_lite::pin_project! {
    /// The answer of an [`Observe`]d request, logged and given its id when ready.
    #[derive(Debug)]
    pub struct ObserveFuture<F> {
        #[pin]
        inner: F,
        span: Span,
        id: Option<HeaderValue>,
        started: Instant,
    }
}

impl<F, R, E> Future for ObserveFuture<F>
where
    F: Future<Output = Result<Response<R>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        let mut answer = ready!(this.inner.poll(cx));
        if let Ok(response) = &mut answer {
            tracing::info!(
                latency = %format_args!("{} ms", this.started.elapsed().as_millis()),
                status = response.status().as_u16(),
                "finished processing request"
            );
            if let Some(id) = this.id.take() {
                response.headers_mut().entry(REQUEST_ID).or_insert(id);
            }
        }
        Poll::Ready(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::routing::get;
    use axum::Router;
    use tower::ServiceExt;

    /// A route answering with the request id its handler saw.
    fn app() -> Router {
        Router::new()
            .route(
                "/seen",
                get(|request: Request<Body>| async move {
                    request.headers()[&REQUEST_ID]
                        .to_str()
                        .expect("text")
                        .to_owned()
                }),
            )
            .layer(ObserveLayer::new(|_: &Request<Body>| {
                tracing::info_span!("request")
            }))
    }

    async fn get_seen(id: Option<&'static str>) -> (String, String) {
        let mut request = Request::get("/seen");
        if let Some(id) = id {
            request = request.header(REQUEST_ID, id);
        }
        let response = app()
            .oneshot(request.body(Body::empty()).expect("a request"))
            .await
            .expect("an answer");
        let answered = response.headers()[&REQUEST_ID]
            .to_str()
            .expect("text")
            .to_owned();
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .expect("a body");
        (answered, String::from_utf8(body.to_vec()).expect("text"))
    }

    #[tokio::test]
    async fn a_request_without_an_id_gets_a_fresh_uuid_seen_by_the_handler_and_answered() {
        let (answered, seen) = get_seen(None).await;
        assert_eq!(answered, seen);
        let id = uuid::Uuid::parse_str(&answered).expect("a UUID");
        assert_eq!(id.get_version_num(), 4);
        let (again, _) = get_seen(None).await;
        assert_ne!(again, answered, "each request gets its own id");
    }

    #[tokio::test]
    async fn a_client_id_is_kept_and_answered() {
        assert_eq!(
            get_seen(Some("client-7")).await,
            ("client-7".to_owned(), "client-7".to_owned())
        );
    }
}

//! Prometheus metrics of a service: its requests by route template, method and status
//! (`http_requests_total`) and their latency (`http_request_duration_seconds`, a histogram), its
//! build (`build_info`), and whatever else the service records through the `metrics` macros, all
//! rendered in the Prometheus text format by [`render`] (`GET /metrics`).
//!
//! Routes are labelled by their template (`/api/movies/{id}`), never by the raw path, and methods
//! outside HTTP's own as `other`, so the number of series stays bounded whatever clients send.
//!
//! A request's series are looked up by [`TrackLayer`] in a table of their handles, filled on the
//! first request of each route, method and status. Looking them up by their labels on every
//! request, as the `metrics` macros do, cost the gateway 3.2k more of the 68.8k instructions of a
//! proxied GET (callgrind).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{OnceLock, RwLock};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::MatchedPath;
use axum::http::{header, HeaderValue, Method, Request};
use axum::response::{IntoResponse, Response};
use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Latency buckets, in seconds: from a cached answer to a slow upstream.
const LATENCY_BUCKETS: [f64; 12] = [
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// How often the recorded histogram samples are folded into their buckets.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's recorder, installed on first use. Where another recorder is installed already,
/// this one records nothing and renders only what the process recorded before that.
///
/// The exporter keeps every histogram sample until something folds them into the buckets: a
/// scrape does, and so does a thread of its own here every few seconds, or a service nobody
/// scrapes would keep every request's latency in memory for ever.
fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&LATENCY_BUCKETS)
            .expect("the buckets are not empty")
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was installed already; /metrics stays empty");
        }
        let upkeep = handle.clone();
        let spawned = std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || loop {
                std::thread::sleep(UPKEEP_EVERY);
                upkeep.run_upkeep();
            });
        if let Err(err) = spawned {
            tracing::warn!(%err, "cannot start the metrics upkeep thread; histograms are folded only when scraped");
        }
        handle
    })
}

/// Installs the recorder and records the service's build: `build_info{service, version} 1`.
pub fn init(service: &'static str, version: &'static str) {
    handle();
    metrics::gauge!("build_info", "service" => service, "version" => version).set(1.0);
}

/// The layer counting every routed request: add it with `Router::route_layer`, which runs it
/// after routing, so that the route template is known.
#[derive(Debug, Clone, Copy, Default)]
pub struct TrackLayer;

impl<S> tower::Layer<S> for TrackLayer {
    type Service = Track<S>;

    fn layer(&self, inner: S) -> Track<S> {
        Track { inner }
    }
}

/// The service of [`TrackLayer`].
#[derive(Debug, Clone)]
pub struct Track<S> {
    inner: S,
}

impl<S, B> tower::Service<Request<B>> for Track<S>
where
    S: tower::Service<Request<B>, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = TrackFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let route = request.extensions().get::<MatchedPath>().cloned();
        let method = method_label(request.method());
        TrackFuture {
            inner: self.inner.call(request),
            started: Instant::now(),
            route,
            method,
        }
    }
}

pin_project_lite::pin_project! {
    /// The answer of a [`Track`]ed request, recorded when it is ready.
    #[derive(Debug)]
    pub struct TrackFuture<F> {
        #[pin]
        inner: F,
        started: Instant,
        route: Option<MatchedPath>,
        method: &'static str,
    }
}

impl<F, E> Future for TrackFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let answer = ready!(this.inner.poll(cx));
        if let Ok(response) = &answer {
            let route = this.route.as_ref().map_or("unmatched", MatchedPath::as_str);
            let seconds = this.started.elapsed().as_secs_f64();
            record(route, this.method, response.status().as_u16(), seconds);
        }
        Poll::Ready(answer)
    }
}

/// The handles of one route's series: its latency histogram and request counter by method, and
/// the counter by status of each method.
#[derive(Debug, Default)]
struct RouteSeries {
    by_method: Vec<MethodSeries>,
}

#[derive(Debug)]
struct MethodSeries {
    method: &'static str,
    duration: Histogram,
    by_status: Vec<(u16, Counter)>,
}

type SeriesTable = RwLock<HashMap<Box<str>, RouteSeries>>;

static SERIES: OnceLock<SeriesTable> = OnceLock::new();

/// Counts a request of `route`, `method` and `status` and records its latency, registering its
/// series on first use.
fn record(route: &str, method: &'static str, status: u16, seconds: f64) {
    let table = SERIES.get_or_init(|| {
        // Handles taken before the recorder is installed would record nothing, for ever.
        handle();
        RwLock::default()
    });
    let find = |routes: &HashMap<Box<str>, RouteSeries>| {
        let of_method = routes
            .get(route)?
            .by_method
            .iter()
            .find(|series| series.method == method)?;
        let (_, requests) = of_method.by_status.iter().find(|(s, _)| *s == status)?;
        requests.increment(1);
        of_method.duration.record(seconds);
        Some(())
    };
    if find(&table.read().unwrap_or_else(|e| e.into_inner())).is_some() {
        return;
    }
    let mut routes = table.write().unwrap_or_else(|e| e.into_inner());
    let of_route = routes.entry(route.into()).or_default();
    let position = match of_route.by_method.iter().position(|s| s.method == method) {
        Some(position) => position,
        None => {
            of_route.by_method.push(MethodSeries {
                method,
                duration: metrics::histogram!(
                    "http_request_duration_seconds",
                    "route" => route.to_owned(),
                    "method" => method
                ),
                by_status: Vec::new(),
            });
            of_route.by_method.len() - 1
        }
    };
    let of_method = &mut of_route.by_method[position];
    if !of_method.by_status.iter().any(|(s, _)| *s == status) {
        let requests = metrics::counter!(
            "http_requests_total",
            "route" => route.to_owned(),
            "method" => method,
            "status" => status.to_string()
        );
        of_method.by_status.push((status, requests));
    }
    // Registered now, by this request or by another one since the read.
    find(&routes);
}

/// The method as a label: one of HTTP's own, or `other`, so that a client inventing methods
/// cannot add series without end.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// `GET /metrics`: everything recorded so far, in the Prometheus text format.
pub async fn render() -> Response {
    let mut response = handle().render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

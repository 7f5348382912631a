//! Prometheus metrics of a service: its requests by route template, method and status
//! (`http_requests_total`) and their latency (`http_request_duration_seconds`, a histogram), its
//! build (`build_info`), and whatever else the service records through the `metrics` macros, all
//! rendered in the Prometheus text format by [`render`] (`GET /metrics`).
//!
//! Routes are labelled by their template (`/api/movies/{id}`), never by the raw path, and methods
//! outside HTTP's own as `other`, so the number of series stays bounded whatever clients send.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::http::{header, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
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

/// The middleware counting every routed request (add it with `Router::route_layer`, which runs
/// after routing, so that the route template is known).
pub async fn track(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let method = method_label(request.method());
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!(
        "http_requests_total",
        "route" => route.clone(),
        "method" => method,
        "status" => status
    )
    .increment(1);
    metrics::histogram!(
        "http_request_duration_seconds",
        "route" => route,
        "method" => method
    )
    .record(started.elapsed().as_secs_f64());
    response
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

//! Sending requests to the router in-process and reading its JSON answers.

use axum::body::Body;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use inventory::AppState;
use serde_json::Value;
use sqlx::PgPool;
use tower::ServiceExt;

/// The application under test, on the test's own database.
pub fn app(db: PgPool) -> Router {
    inventory::router(AppState { db })
}

/// A response with its body parsed as JSON; a body that is not JSON fails the test, since every
/// answer of the service, errors included, must be JSON.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub json: Value,
}

impl Reply {
    /// Asserts the status and that the body is the shared error shape with this code; returns the
    /// message.
    #[track_caller]
    pub fn assert_error(&self, status: StatusCode, code: &str) -> String {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(self.json["error"], code, "{self:?}");
        let message = self.json["message"]
            .as_str()
            .unwrap_or_else(|| panic!("no message in {self:?}"));
        assert!(!message.is_empty(), "{self:?}");
        let content_type = self.headers.get(header::CONTENT_TYPE);
        assert_eq!(
            content_type.and_then(|v| v.to_str().ok()),
            Some("application/json"),
            "{self:?}"
        );
        message.to_owned()
    }
}

/// Sends a request built by hand.
pub async fn send(app: &Router, request: Request<Body>) -> Reply {
    let response = app
        .clone()
        .oneshot(request)
        .await
        .expect("the router is infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body can be read")
        .to_bytes();
    let json = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|err| {
            panic!(
                "{status}: body is not JSON ({err}): {:?}",
                String::from_utf8_lossy(&bytes)
            )
        })
    };
    Reply {
        status,
        headers,
        json,
    }
}

/// Sends `body` as is, with the given content type if any.
pub async fn send_raw(
    app: &Router,
    method: Method,
    uri: &str,
    content_type: Option<&str>,
    body: impl Into<Body>,
) -> Reply {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(content_type) = content_type {
        request = request.header(header::CONTENT_TYPE, content_type);
    }
    send(app, request.body(body.into()).expect("valid request")).await
}

pub async fn get(app: &Router, uri: &str) -> Reply {
    send_raw(app, Method::GET, uri, None, Body::empty()).await
}

pub async fn delete(app: &Router, uri: &str) -> Reply {
    send_raw(app, Method::DELETE, uri, None, Body::empty()).await
}

pub async fn post_json(app: &Router, uri: &str, body: &Value) -> Reply {
    send_raw(
        app,
        Method::POST,
        uri,
        Some("application/json"),
        body.to_string(),
    )
    .await
}

pub async fn put_json(app: &Router, uri: &str, body: &Value) -> Reply {
    send_raw(
        app,
        Method::PUT,
        uri,
        Some("application/json"),
        body.to_string(),
    )
    .await
}

/// Creates a movie and returns its id.
pub async fn create(app: &Router, title: &str, description: Option<&str>) -> i64 {
    let reply = post_json(
        app,
        "/api/movies",
        &serde_json::json!({"title": title, "description": description}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
    reply.json["id"].as_i64().expect("numeric id")
}

/// The titles of `GET uri`, in order.
pub async fn titles(app: &Router, uri: &str) -> Vec<String> {
    let reply = get(app, uri).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    reply
        .json
        .as_array()
        .expect("an array")
        .iter()
        .map(|movie| movie["title"].as_str().expect("a title").to_owned())
        .collect()
}

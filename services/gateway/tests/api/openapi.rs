//! `openapi.yaml` says what the gateway answers: real answers of a running gateway, in front of
//! the real inventory service on a fresh database and the real broker, are checked against it
//! (the status is documented for the path and method, and the JSON body matches the schema).

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::helpers::{
    amqp_url, config, dead_upstream, echo_app, serve, unique_queue, Broker, TestGateway,
};

/// The spec, as JSON for easy navigation.
fn spec() -> Value {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../openapi.yaml"))
        .expect("openapi.yaml at the repository root");
    serde_yaml::from_str(&text).expect("openapi.yaml is valid YAML")
}

/// Follows a local `$ref` (`#/components/...`), as often as needed.
fn resolve<'a>(spec: &'a Value, mut value: &'a Value) -> &'a Value {
    while let Some(reference) = value.get("$ref").and_then(Value::as_str) {
        let pointer = reference.strip_prefix('#').expect("only local references");
        value = spec
            .pointer(pointer)
            .unwrap_or_else(|| panic!("dangling reference {reference}"));
    }
    value
}

/// The documented path template a concrete path matches, e.g. `/api/movies/{id}`.
fn template_of(spec: &Value, path: &str) -> Option<String> {
    let segments: Vec<&str> = path.split('/').collect();
    spec["paths"].as_object()?.keys().find_map(|template| {
        let pattern: Vec<&str> = template.split('/').collect();
        let matches = pattern.len() == segments.len()
            && pattern
                .iter()
                .zip(&segments)
                .all(|(p, s)| p == s || (p.starts_with('{') && p.ends_with('}')));
        matches.then(|| template.clone())
    })
}

/// The schema subset our spec uses: `type`, `nullable`, `required`, `properties`, `items`, `enum`,
/// `oneOf`, `minimum`, `minLength`, `maxLength`, `format: uuid`, and `$ref`.
fn validate(spec: &Value, schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
    let schema = resolve(spec, schema);
    if value.is_null() {
        if schema["nullable"] != json!(true) {
            errors.push(format!("{at}: null but not nullable"));
        }
        return;
    }
    if let Some(alternatives) = schema["oneOf"].as_array() {
        let matching = alternatives
            .iter()
            .filter(|alternative| {
                let mut sub = Vec::new();
                validate(spec, alternative, value, at, &mut sub);
                sub.is_empty()
            })
            .count();
        if matching != 1 {
            errors.push(format!(
                "{at}: matches {matching} of the oneOf alternatives"
            ));
        }
        return;
    }
    let type_ok = match schema["type"].as_str() {
        None => true,
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_boolean(),
        Some(other) => panic!("unsupported schema type {other}"),
    };
    if !type_ok {
        errors.push(format!("{at}: {value} is not of type {}", schema["type"]));
        return;
    }
    if let Some(allowed) = schema["enum"].as_array() {
        if !allowed.contains(value) {
            errors.push(format!("{at}: {value} is not one of {allowed:?}"));
        }
    }
    if let (Some(minimum), Some(number)) = (schema["minimum"].as_f64(), value.as_f64()) {
        if number < minimum {
            errors.push(format!("{at}: {number} is below {minimum}"));
        }
    }
    if let Some(text) = value.as_str() {
        let length = text.chars().count() as u64;
        if schema["minLength"].as_u64().is_some_and(|min| length < min)
            || schema["maxLength"].as_u64().is_some_and(|max| length > max)
        {
            errors.push(format!("{at}: length {length} out of bounds"));
        }
        if schema["format"] == "uuid" && uuid::Uuid::parse_str(text).is_err() {
            errors.push(format!("{at}: {text} is not a UUID"));
        }
    }
    if let Some(object) = value.as_object() {
        for required in schema["required"].as_array().into_iter().flatten() {
            let name = required.as_str().unwrap();
            if !object.contains_key(name) {
                errors.push(format!("{at}: required property {name} is missing"));
            }
        }
        if let Some(properties) = schema["properties"].as_object() {
            for (name, property) in properties {
                if let Some(inner) = object.get(name) {
                    validate(spec, property, inner, &format!("{at}.{name}"), errors);
                }
            }
        }
    }
    if let (Some(items), Some(array)) = (schema.get("items"), value.as_array()) {
        for (index, item) in array.iter().enumerate() {
            validate(spec, items, item, &format!("{at}[{index}]"), errors);
        }
    }
}

/// Sends requests through a gateway and checks every answer against the spec, remembering which
/// documented (path, method, status) triples were seen.
struct Checker {
    spec: Value,
    seen: BTreeSet<(String, String, String)>,
}

impl Checker {
    fn new() -> Self {
        Self {
            spec: spec(),
            seen: BTreeSet::new(),
        }
    }

    /// Sends the request, checks the answer against the spec, and returns its status and body.
    async fn check(
        &mut self,
        gateway: &TestGateway,
        method: Method,
        path_and_query: &str,
        content_type: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> (StatusCode, Value) {
        let mut request = gateway
            .client
            .request(method.clone(), gateway.url(path_and_query));
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        self.send(request, method, path_and_query).await
    }

    /// Sends a request built by the caller and checks its answer.
    async fn send(
        &mut self,
        request: reqwest::RequestBuilder,
        method: Method,
        path_and_query: &str,
    ) -> (StatusCode, Value) {
        let response = request.send().await.unwrap();
        let status = response.status();
        let media_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned());
        let bytes = response.bytes().await.unwrap();
        let what = format!("{method} {path_and_query} -> {status}");

        let path = path_and_query.split('?').next().unwrap();
        let template =
            template_of(&self.spec, path).unwrap_or_else(|| panic!("{what}: path not documented"));
        let operation = &self.spec["paths"][&template][method.as_str().to_lowercase()];
        if operation.is_null() {
            // An undocumented method on a documented path must be refused.
            assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{what}");
            let body: Value = serde_json::from_slice(&bytes).unwrap();
            let mut errors = Vec::new();
            validate(
                &self.spec,
                &json!({"$ref": "#/components/schemas/ErrorBody"}),
                &body,
                "body",
                &mut errors,
            );
            assert!(errors.is_empty(), "{what}: {errors:?}");
            return (status, body);
        }
        let documented = &operation["responses"][status.as_str()];
        assert!(
            !documented.is_null(),
            "{what}: status not documented for {template}"
        );
        let documented = resolve(&self.spec, documented);
        self.seen.insert((
            template,
            method.as_str().to_owned(),
            status.as_str().to_owned(),
        ));

        let Some(schema) = documented.pointer("/content/application~1json/schema") else {
            assert!(bytes.is_empty(), "{what}: a body where none is documented");
            return (status, Value::Null);
        };
        assert_eq!(media_type.as_deref(), Some("application/json"), "{what}");
        let body: Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|err| panic!("{what}: not JSON ({err}): {bytes:?}"));
        let mut errors = Vec::new();
        validate(&self.spec, schema, &body, "body", &mut errors);
        assert!(
            errors.is_empty(),
            "{what}: {body} does not match the spec: {errors:?}"
        );
        (status, body)
    }

    async fn json(
        &mut self,
        gateway: &TestGateway,
        method: Method,
        path: &str,
        body: Value,
    ) -> (StatusCode, Value) {
        self.check(
            gateway,
            method,
            path,
            Some("application/json"),
            Some(serde_json::to_vec(&body).unwrap()),
        )
        .await
    }

    async fn empty(
        &mut self,
        gateway: &TestGateway,
        method: Method,
        path: &str,
    ) -> (StatusCode, Value) {
        self.check(gateway, method, path, None, None).await
    }
}

#[test]
fn every_error_response_is_documented_as_error_body() {
    let spec = spec();
    let error_body = json!({"$ref": "#/components/schemas/ErrorBody"});
    let mut operations = 0;
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            if method == "parameters" {
                continue;
            }
            operations += 1;
            for (status, response) in operation["responses"].as_object().unwrap() {
                let code: u16 = status.parse().unwrap();
                if code < 400 {
                    continue;
                }
                let response = resolve(&spec, response);
                let schema = response.pointer("/content/application~1json/schema");
                assert_eq!(schema, Some(&error_body), "{method} {path} {status}");
            }
        }
    }
    assert_eq!(operations, 9, "every gateway endpoint is documented");
}

#[sqlx::test(migrator = "inventory::MIGRATOR")]
async fn real_answers_through_the_gateway_match_the_spec(pool: PgPool) {
    let inventory = serve(inventory::router(inventory::AppState { db: pool })).await;
    let queue = unique_queue();
    let broker = Broker::connect().await;
    let gateway = TestGateway::spawn(config(&[inventory], &amqp_url(), &queue)).await;
    gateway.wait_ready().await;
    let mut c = Checker::new();

    // The catalogue, through the gateway, answered by the real inventory.
    let (status, created) = c
        .json(
            &gateway,
            Method::POST,
            "/api/movies",
            json!({"title": "The Matrix", "description": "Neo"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let id = created["id"].as_i64().unwrap();
    let (status, _) = c
        .json(
            &gateway,
            Method::POST,
            "/api/movies",
            json!({"title": "Alien"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    c.json(
        &gateway,
        Method::POST,
        "/api/movies",
        json!({"description": "no title"}),
    )
    .await;
    c.check(
        &gateway,
        Method::POST,
        "/api/movies",
        Some("application/json"),
        Some(b"{oops".to_vec()),
    )
    .await;
    c.check(
        &gateway,
        Method::POST,
        "/api/movies",
        Some("text/plain"),
        Some(b"hello".to_vec()),
    )
    .await;
    let (_, list) = c.empty(&gateway, Method::GET, "/api/movies").await;
    assert_eq!(list.as_array().unwrap().len(), 2);
    let (_, found) = c
        .empty(&gateway, Method::GET, "/api/movies?title=matr")
        .await;
    assert_eq!(found.as_array().unwrap().len(), 1);
    c.empty(&gateway, Method::GET, &format!("/api/movies/{id}"))
        .await;
    c.empty(&gateway, Method::GET, "/api/movies/999999").await;
    c.empty(&gateway, Method::GET, "/api/movies/not-a-number")
        .await;
    let (status, updated) = c
        .json(
            &gateway,
            Method::PUT,
            &format!("/api/movies/{id}"),
            json!({"description": null}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(updated["description"], Value::Null);
    c.json(
        &gateway,
        Method::PUT,
        "/api/movies/999999",
        json!({"title": "x"}),
    )
    .await;
    c.json(
        &gateway,
        Method::PUT,
        &format!("/api/movies/{id}"),
        json!({"title": ""}),
    )
    .await;
    c.empty(&gateway, Method::PATCH, &format!("/api/movies/{id}"))
        .await;
    let (status, _) = c
        .empty(&gateway, Method::DELETE, &format!("/api/movies/{id}"))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = c
        .empty(&gateway, Method::DELETE, &format!("/api/movies/{id}"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, deleted) = c.empty(&gateway, Method::DELETE, "/api/movies").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(deleted["deleted"], 1);

    // Billing and operations, answered by the gateway itself.
    let order = json!({"user_id": "usr_123", "number_of_items": 3, "total_amount": 99.97});
    let (status, _) = c
        .json(&gateway, Method::POST, "/api/billing", order.clone())
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    c.json(
        &gateway,
        Method::POST,
        "/api/billing",
        json!({"user_id": "u"}),
    )
    .await;
    c.check(
        &gateway,
        Method::POST,
        "/api/billing",
        Some("text/plain"),
        Some(b"x".to_vec()),
    )
    .await;
    c.check(
        &gateway,
        Method::POST,
        "/api/billing",
        Some("application/json"),
        Some(vec![b' '; 2 << 20]),
    )
    .await;
    c.empty(&gateway, Method::GET, "/api/billing").await;
    c.empty(&gateway, Method::GET, "/health").await;
    c.empty(&gateway, Method::GET, "/ready").await;
    gateway.stop().await;

    // The gateway's own failures in front of inventory and the broker.
    let slow = serve(echo_app("slow")).await;
    let mut failing = config(
        &[dead_upstream().await],
        "amqp://guest:guest@127.0.0.1:1/%2f",
        &queue,
    );
    failing.upstream_timeout_ms = 300;
    let gateway = TestGateway::spawn(failing).await;
    let (status, _) = c.empty(&gateway, Method::GET, "/api/movies").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let (status, _) = c.empty(&gateway, Method::GET, "/api/movies/1").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let (status, _) = c.json(&gateway, Method::POST, "/api/billing", order).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let (status, _) = c.empty(&gateway, Method::GET, "/ready").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    gateway.stop().await;
    let mut slow_config = config(&[slow], "amqp://guest:guest@127.0.0.1:1/%2f", &queue);
    slow_config.upstream_timeout_ms = 300;
    let gateway = TestGateway::spawn(slow_config).await;
    let request = gateway
        .client
        .delete(gateway.url("/api/movies"))
        .header("x-echo-delay-ms", "3000");
    let (status, _) = c.send(request, Method::DELETE, "/api/movies").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    gateway.stop().await;

    // Every documented success answer was seen and matched.
    for expected in [
        ("/api/movies", "GET", "200"),
        ("/api/movies", "POST", "201"),
        ("/api/movies", "DELETE", "200"),
        ("/api/movies/{id}", "GET", "200"),
        ("/api/movies/{id}", "PUT", "200"),
        ("/api/movies/{id}", "DELETE", "200"),
        ("/api/billing", "POST", "202"),
        ("/health", "GET", "200"),
        ("/ready", "GET", "200"),
    ] {
        let key = (
            expected.0.to_owned(),
            expected.1.to_owned(),
            expected.2.to_owned(),
        );
        assert!(
            c.seen.contains(&key),
            "{expected:?} never exercised; seen {:?}",
            c.seen
        );
    }
    broker.delete_queue(&queue).await;
    broker.close().await;
}

//! Everything a client can get wrong is a 4xx with the shared JSON error body, never a 5xx and
//! never a plain-text answer, and nothing is stored.

use axum::body::Body;
use axum::http::{header, Method, StatusCode};
use serde_json::json;
use sqlx::PgPool;

use crate::helpers::{app, create, get, post_json, put_json, send_raw, titles};

#[sqlx::test(migrator = "inventory::MIGRATOR")]
async fn an_id_that_is_not_an_i64_is_400(db: PgPool) {
    let app = app(db);
    let id = create(&app, "Alien", None).await;
    for uri in [
        "/api/movies/abc",
        "/api/movies/1.5",
        "/api/movies/99999999999999999999",
        "/api/movies/%20",
    ] {
        get(&app, uri)
            .await
            .assert_error(StatusCode::BAD_REQUEST, "invalid_path");
        send_raw(&app, Method::DELETE, uri, None, Body::empty())
            .await
            .assert_error(StatusCode::BAD_REQUEST, "invalid_path");
        put_json(&app, uri, &json!({"title": "x"}))
            .await
            .assert_error(StatusCode::BAD_REQUEST, "invalid_path");
    }
    assert_eq!(titles(&app, "/api/movies").await, ["Alien"]);
    assert_eq!(
        get(&app, &format!("/api/movies/{id}")).await.status,
        StatusCode::OK
    );
}

#[sqlx::test(migrator = "inventory::MIGRATOR")]
async fn malformed_json_is_400(db: PgPool) {
    let app = app(db);
    for body in [
        r#"{"title": "#,
        "not json",
        r#"{"title": "x",}"#,
        "{'title': 'x'}",
    ] {
        send_raw(
            &app,
            Method::POST,
            "/api/movies",
            Some("application/json"),
            body,
        )
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid_json");
    }
    let id = create(&app, "Alien", None).await;
    send_raw(
        &app,
        Method::PUT,
        &format!("/api/movies/{id}"),
        Some("application/json"),
        "{",
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, "invalid_json");
    assert_eq!(titles(&app, "/api/movies").await, ["Alien"]);
}

#[sqlx::test(migrator = "inventory::MIGRATOR")]
async fn wrong_types_and_missing_title_are_422(db: PgPool) {
    let app = app(db);
    let cases = [
        (json!({}), Some("title is required")),
        (json!({"title": null}), Some("title is required")),
        (
            json!({"description": "no title"}),
            Some("title is required"),
        ),
        (json!({"title": 5}), Some("title")),
        (json!({"title": ["a"]}), Some("title")),
        (
            json!({"title": "ok", "description": 5}),
            Some("description"),
        ),
        (
            json!({"title": "ok", "description": {"x": 1}}),
            Some("description"),
        ),
        (json!(["Alien"]), Some("object")),
        (json!("Alien"), Some("object")),
        (json!(42), Some("object")),
        (json!(null), Some("object")),
    ];
    for (body, expected) in cases {
        let message = post_json(&app, "/api/movies", &body)
            .await
            .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
        if let Some(expected) = expected {
            assert!(message.contains(expected), "{body}: {message}");
        }
        // In the project's words, without the parser's preamble.
        assert!(
            !message.contains("Failed to deserialize"),
            "{body}: {message}"
        );
    }
    for field in ["title", "description"] {
        let message = post_json(&app, "/api/movies", &json!({"title": "ok", field: 5}))
            .await
            .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
        assert!(
            message.starts_with(&format!("{field} must be a string or null")),
            "{message}"
        );
    }
    let message = send_raw(
        &app,
        Method::POST,
        "/api/movies",
        Some("application/json"),
        r#"{"title": "a", "title": "b"}"#,
    )
    .await
    .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    assert!(message.starts_with("title is given twice"), "{message}");
    assert!(titles(&app, "/api/movies").await.is_empty());
}

#[sqlx::test(migrator = "inventory::MIGRATOR")]
async fn empty_or_oversized_text_is_422_saying_the_limit(db: PgPool) {
    let app = app(db);
    let cases = [
        (json!({"title": ""}), "title must not be empty".to_owned()),
        (
            json!({"title": " \t\n "}),
            "title must not be empty".to_owned(),
        ),
        (
            json!({"title": "x".repeat(256)}),
            "title must be at most 255 characters".to_owned(),
        ),
        (
            json!({"title": "ok", "description": "d".repeat(10_001)}),
            "description must be at most 10000 characters".to_owned(),
        ),
        (
            json!({"title": "nul\u{0}byte"}),
            "title must not contain NUL characters".to_owned(),
        ),
        (
            json!({"title": "ok", "description": "nul\u{0}"}),
            "description must not contain NUL characters".to_owned(),
        ),
    ];
    for (body, expected) in cases {
        let message = post_json(&app, "/api/movies", &body)
            .await
            .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
        assert_eq!(message, expected);
    }
    assert!(titles(&app, "/api/movies").await.is_empty());

    // The limits themselves are accepted, counted in characters rather than bytes.
    let reply = post_json(
        &app,
        "/api/movies",
        &json!({"title": "é".repeat(255), "description": "ü".repeat(10_000)}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
}

#[sqlx::test(migrator = "inventory::MIGRATOR")]
async fn a_body_without_json_content_type_is_415(db: PgPool) {
    let app = app(db);
    let body = json!({"title": "Alien"}).to_string();
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        send_raw(
            &app,
            Method::POST,
            "/api/movies",
            content_type,
            body.clone(),
        )
        .await
        .assert_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
    }
    send_raw(&app, Method::POST, "/api/movies", None, Body::empty())
        .await
        .assert_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
    assert!(titles(&app, "/api/movies").await.is_empty());

    // A charset parameter is still JSON.
    let reply = send_raw(
        &app,
        Method::POST,
        "/api/movies",
        Some("application/json; charset=utf-8"),
        body,
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
}

#[sqlx::test(migrator = "inventory::MIGRATOR")]
async fn a_body_over_the_limit_is_413(db: PgPool) {
    let app = app(db);
    let description = "d".repeat(inventory::MAX_BODY_BYTES + 1);
    let message = post_json(
        &app,
        "/api/movies",
        &json!({"title": "big", "description": description}),
    )
    .await
    .assert_error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    assert!(
        message.contains(&inventory::MAX_BODY_BYTES.to_string()),
        "{message}"
    );
    assert!(titles(&app, "/api/movies").await.is_empty());
}

#[sqlx::test(migrator = "inventory::MIGRATOR")]
async fn a_nul_in_the_search_is_400_not_a_database_error(db: PgPool) {
    let app = app(db);
    get(&app, "/api/movies?title=a%00b")
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid_query");
}

#[sqlx::test(migrator = "inventory::MIGRATOR")]
async fn a_query_string_that_is_not_percent_encoded_utf8_is_400(db: PgPool) {
    let app = app(db);
    create(&app, "%ZZ top", None).await;
    for uri in [
        "/api/movies?title=%ZZ",
        "/api/movies?title=%FF",
        "/api/movies?title=%",
    ] {
        let message = get(&app, uri)
            .await
            .assert_error(StatusCode::BAD_REQUEST, "invalid_query");
        assert!(message.starts_with("the query string"), "{uri}: {message}");
    }
    assert_eq!(titles(&app, "/api/movies?title=%25ZZ").await, ["%ZZ top"]);
}

#[sqlx::test(migrator = "inventory::MIGRATOR")]
async fn an_unknown_route_is_a_json_404(db: PgPool) {
    let app = app(db);
    for uri in ["/", "/nope", "/api/movie", "/api/movies/1/extra"] {
        get(&app, uri)
            .await
            .assert_error(StatusCode::NOT_FOUND, "not_found");
    }
    post_json(&app, "/api/films", &json!({"title": "x"}))
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
}

#[sqlx::test(migrator = "inventory::MIGRATOR")]
async fn a_wrong_method_is_a_json_405_listing_the_allowed_ones(db: PgPool) {
    let app = app(db);
    let cases = [
        (Method::PATCH, "/api/movies", "GET,HEAD,POST,DELETE"),
        (Method::PUT, "/api/movies", "GET,HEAD,POST,DELETE"),
        (Method::POST, "/api/movies/1", "GET,HEAD,PUT,DELETE"),
        (Method::PATCH, "/api/movies/1", "GET,HEAD,PUT,DELETE"),
        (Method::POST, "/health", "GET,HEAD"),
        (Method::DELETE, "/ready", "GET,HEAD"),
    ];
    for (method, uri, allowed) in cases {
        let reply = send_raw(&app, method, uri, Some("application/json"), "{}").await;
        reply.assert_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
        let allow = reply
            .headers
            .get(header::ALLOW)
            .map(|v| v.to_str().expect("ascii"));
        assert_eq!(allow, Some(allowed), "{uri}");
    }
}

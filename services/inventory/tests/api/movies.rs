//! The catalogue's happy paths and 404s: create, list, search, get, partial update, delete.

use axum::http::{header, StatusCode};
use serde_json::json;
use sqlx::PgPool;

use crate::helpers::{app, create, delete, get, post_json, put_json, titles};

#[sqlx::test(migrator = "inventory::MIGRATOR")]
async fn create_answers_201_with_the_movie_and_its_location(db: PgPool) {
    let app = app(db);
    let reply = post_json(
        &app,
        "/api/movies",
        &json!({"title": "  The Matrix ", "description": "A hacker learns the truth."}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
    let id = reply.json["id"].as_i64().expect("numeric id");
    assert_eq!(
        reply.json,
        json!({"id": id, "title": "The Matrix", "description": "A hacker learns the truth."}),
        "the title is stored trimmed"
    );
    let location = reply.headers[header::LOCATION].to_str().expect("ascii");
    assert_eq!(location, format!("/api/movies/{id}"));

    let fetched = get(&app, location).await;
    assert_eq!(fetched.status, StatusCode::OK);
    assert_eq!(fetched.json, reply.json);
}

#[sqlx::test(migrator = "inventory::MIGRATOR")]
async fn description_is_optional_and_may_be_null(db: PgPool) {
    let app = app(db);
    for body in [
        json!({"title": "Alien"}),
        json!({"title": "Alien", "description": null}),
    ] {
        let reply = post_json(&app, "/api/movies", &body).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
        assert_eq!(reply.json["description"], serde_json::Value::Null);
    }
    // Unknown fields, such as an `id` sent back by a client, are ignored rather than refused.
    let reply = post_json(&app, "/api/movies", &json!({"id": 999, "title": "Heat"})).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
    assert_ne!(reply.json["id"], 999);
}

#[sqlx::test(migrator = "inventory::MIGRATOR")]
async fn list_is_empty_then_ordered_by_id(db: PgPool) {
    let app = app(db);
    let reply = get(&app, "/api/movies").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json, json!([]));

    let zulu = create(&app, "Zulu", None).await;
    let alpha = create(&app, "Alpha", Some("first letter")).await;
    let reply = get(&app, "/api/movies").await;
    assert_eq!(
        reply.json,
        json!([
            {"id": zulu, "title": "Zulu", "description": null},
            {"id": alpha, "title": "Alpha", "description": "first letter"},
        ])
    );
}

#[sqlx::test(migrator = "inventory::MIGRATOR")]
async fn search_is_a_case_insensitive_substring_match(db: PgPool) {
    let app = app(db);
    for title in [
        "The Matrix",
        "MATRIX RELOADED",
        "Alien",
        "the matrix revolutions",
    ] {
        create(&app, title, None).await;
    }
    assert_eq!(
        titles(&app, "/api/movies?title=matrix").await,
        ["The Matrix", "MATRIX RELOADED", "the matrix revolutions"]
    );
    assert_eq!(titles(&app, "/api/movies?title=LiE").await, ["Alien"]);
    assert!(titles(&app, "/api/movies?title=zzz").await.is_empty());
    // Unknown parameters are ignored; an empty search matches everything.
    assert_eq!(titles(&app, "/api/movies?title=&page=2").await.len(), 4);
}

#[sqlx::test(migrator = "inventory::MIGRATOR")]
async fn search_matches_wildcards_and_backslash_literally(db: PgPool) {
    let app = app(db);
    for title in [
        "100% Wolf",
        "1000 Wolves",
        "a_b",
        "axb",
        r"back\slash",
        "backslash",
    ] {
        create(&app, title, None).await;
    }
    // Unescaped, `100%` would also match "1000 Wolves" and `a_b` would match "axb".
    assert_eq!(
        titles(&app, "/api/movies?title=100%25").await,
        ["100% Wolf"]
    );
    assert_eq!(titles(&app, "/api/movies?title=A_B").await, ["a_b"]);
    assert_eq!(
        titles(&app, "/api/movies?title=k%5Cs").await,
        [r"back\slash"]
    );
    assert!(titles(&app, "/api/movies?title=%25%25%25").await.is_empty());
}

#[sqlx::test(migrator = "inventory::MIGRATOR")]
async fn get_of_a_missing_movie_is_404(db: PgPool) {
    let app = app(db);
    for uri in ["/api/movies/1", "/api/movies/0", "/api/movies/-5"] {
        let message = get(&app, uri)
            .await
            .assert_error(StatusCode::NOT_FOUND, "not_found");
        assert!(message.contains("does not exist"), "{message}");
    }
}

#[sqlx::test(migrator = "inventory::MIGRATOR")]
async fn update_changes_only_the_fields_given(db: PgPool) {
    let app = app(db);
    let id = create(&app, "The Matrix", Some("original")).await;
    let uri = format!("/api/movies/{id}");

    let reply = put_json(&app, &uri, &json!({"title": "The Matrix Reloaded"})).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(
        reply.json,
        json!({"id": id, "title": "The Matrix Reloaded", "description": "original"})
    );

    let reply = put_json(&app, &uri, &json!({"description": "sequel"})).await;
    assert_eq!(
        reply.json,
        json!({"id": id, "title": "The Matrix Reloaded", "description": "sequel"})
    );

    let reply = put_json(&app, &uri, &json!({"description": null})).await;
    assert_eq!(
        reply.json,
        json!({"id": id, "title": "The Matrix Reloaded", "description": null})
    );

    // An empty update changes nothing and still answers with the movie.
    let reply = put_json(&app, &uri, &json!({})).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json["title"], "The Matrix Reloaded");

    // The change is stored, not only answered.
    assert_eq!(get(&app, &uri).await.json, reply.json);
}

#[sqlx::test(migrator = "inventory::MIGRATOR")]
async fn update_refuses_an_invalid_title_and_keeps_the_movie(db: PgPool) {
    let app = app(db);
    let id = create(&app, "Alien", Some("in space")).await;
    let uri = format!("/api/movies/{id}");
    for body in [
        json!({"title": ""}),
        json!({"title": "   "}),
        json!({"title": null}),
        json!({"title": "x".repeat(256), "description": "changed"}),
    ] {
        put_json(&app, &uri, &body)
            .await
            .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    }
    assert_eq!(
        get(&app, &uri).await.json,
        json!({"id": id, "title": "Alien", "description": "in space"})
    );
}

#[sqlx::test(migrator = "inventory::MIGRATOR")]
async fn update_of_a_missing_movie_is_404(db: PgPool) {
    let app = app(db);
    put_json(&app, "/api/movies/42", &json!({"title": "Ghost"}))
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    assert!(
        titles(&app, "/api/movies").await.is_empty(),
        "PUT must not create"
    );
}

#[sqlx::test(migrator = "inventory::MIGRATOR")]
async fn delete_removes_the_movie_then_404(db: PgPool) {
    let app = app(db);
    let id = create(&app, "Alien", None).await;
    let other = create(&app, "Heat", None).await;
    let uri = format!("/api/movies/{id}");

    let reply = delete(&app, &uri).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(reply.json["id"], id);
    assert!(reply.json["message"].is_string(), "{reply:?}");

    get(&app, &uri)
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    delete(&app, &uri)
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    assert_eq!(
        get(&app, &format!("/api/movies/{other}")).await.status,
        StatusCode::OK,
        "only the movie asked for is deleted"
    );
}

#[sqlx::test(migrator = "inventory::MIGRATOR")]
async fn delete_all_removes_every_movie_and_says_how_many(db: PgPool) {
    let app = app(db);
    for title in ["A", "B", "C"] {
        create(&app, title, None).await;
    }
    let reply = delete(&app, "/api/movies").await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(reply.json["deleted"], 3);
    assert!(titles(&app, "/api/movies").await.is_empty());

    let reply = delete(&app, "/api/movies").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json["deleted"], 0);
}

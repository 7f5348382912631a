//! The catalogue a page at a time: `limit` and the `after` cursor, the `Link` header to the next
//! page, and the cap on a list without `limit` (the original API's full list, bounded).

use axum::http::{header, StatusCode};
use inventory::movies::{LIST_CAP, MAX_PAGE_SIZE};
use serde_json::Value;
use sqlx::PgPool;

use crate::helpers::{app, create, get, Reply};

/// The `Link` header's target for rel="next", if any.
fn next_link(reply: &Reply) -> Option<String> {
    let link = reply.headers.get(header::LINK)?.to_str().expect("ascii");
    let target = link
        .strip_suffix(">; rel=\"next\"")
        .and_then(|rest| rest.strip_prefix('<'))
        .unwrap_or_else(|| panic!("a next link, not {link}"));
    Some(target.to_owned())
}

fn ids(reply: &Reply) -> Vec<i64> {
    reply
        .json
        .as_array()
        .expect("an array")
        .iter()
        .map(|movie| movie["id"].as_i64().expect("an id"))
        .collect()
}

#[sqlx::test(migrator = "inventory::MIGRATOR")]
async fn pages_follow_their_next_links_to_every_movie_once(db: PgPool) {
    let app = app(db);
    let mut created = Vec::new();
    for n in 0..7 {
        created.push(create(&app, &format!("Movie {n}"), None).await);
    }
    let mut seen = Vec::new();
    let mut pages = 0;
    let mut next = Some("/api/movies?limit=3".to_owned());
    while let Some(uri) = next {
        let reply = get(&app, &uri).await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        assert!(ids(&reply).len() <= 3);
        seen.extend(ids(&reply));
        pages += 1;
        next = next_link(&reply);
    }
    assert_eq!(seen, created);
    assert_eq!(pages, 3, "3 + 3 + 1, and no link after the last page");

    // The search goes along with the cursor, its characters encoded.
    let matrix = create(&app, "The Matrix & co", None).await;
    create(&app, "Alien", None).await;
    let reloaded = create(&app, "The Matrix & co, reloaded", None).await;
    let reply = get(&app, "/api/movies?title=matrix%20%26&limit=1").await;
    assert_eq!(ids(&reply), [matrix]);
    let next = next_link(&reply).expect("a second match");
    assert_eq!(
        next,
        format!("/api/movies?title=matrix+%26&limit=1&after={matrix}")
    );
    let reply = get(&app, &next).await;
    assert_eq!(ids(&reply), [reloaded]);
    assert_eq!(next_link(&reply), None);

    // A page that ends exactly at the last movie says nothing more.
    let reply = get(&app, &format!("/api/movies?after={}", created[6])).await;
    assert_eq!(ids(&reply).len(), 3);
    assert!(reply.headers.get(header::LINK).is_none());
}

#[sqlx::test(migrator = "inventory::MIGRATOR")]
async fn without_limit_the_list_is_whole_up_to_the_cap_then_says_where_the_rest_is(db: PgPool) {
    let app = app(db.clone());
    sqlx::query("INSERT INTO movies (title) SELECT 'Movie ' || n FROM generate_series(1, $1) AS n")
        .bind(i64::from(LIST_CAP))
        .execute(&db)
        .await
        .expect("insert");
    let reply = get(&app, "/api/movies").await;
    assert_eq!(ids(&reply).len(), LIST_CAP as usize);
    assert!(
        reply.headers.get(header::LINK).is_none(),
        "exactly the cap: all of them"
    );

    let last = create(&app, "One more", None).await;
    let reply = get(&app, "/api/movies").await;
    assert_eq!(
        ids(&reply).len(),
        LIST_CAP as usize,
        "no more than the cap at once"
    );
    let next = next_link(&reply).expect("beyond the cap, the answer says where the rest is");
    let reply = get(&app, &next).await;
    assert_eq!(ids(&reply), [last]);
}

#[sqlx::test(migrator = "inventory::MIGRATOR")]
async fn a_limit_or_cursor_out_of_range_is_a_json_400(db: PgPool) {
    let app = app(db);
    for uri in [
        "/api/movies?limit=0".to_owned(),
        format!("/api/movies?limit={}", MAX_PAGE_SIZE + 1),
        "/api/movies?limit=-1".to_owned(),
        "/api/movies?limit=ten".to_owned(),
        "/api/movies?after=-5".to_owned(),
        "/api/movies?after=x".to_owned(),
    ] {
        let message = get(&app, &uri)
            .await
            .assert_error(StatusCode::BAD_REQUEST, "invalid_query");
        assert!(
            message.contains("limit") || message.contains("after"),
            "{uri}: {message}"
        );
    }
    let reply = get(&app, &format!("/api/movies?limit={MAX_PAGE_SIZE}")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json, Value::Array(Vec::new()));
}

//! The movie catalogue: `/api/movies` and `/api/movies/{id}`, create, list and search, read, partial
//! update, delete one and delete all.

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::routing::get;
use axum::Router;
use std::fmt;

use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{json, Value};
use tracing::instrument;

use crate::error::{Error, Result};
use crate::extract::{Json, Path, Query};
use crate::AppState;

/// Longest accepted title, in characters; the column's CHECK constraint says the same.
pub const MAX_TITLE_CHARS: usize = 255;

/// Longest accepted description, in characters: generous for a synopsis, yet bounded so one
/// request cannot fill the database.
pub const MAX_DESCRIPTION_CHARS: usize = 10_000;

/// Most movies one page holds when the client asks for pages (`limit`).
pub const MAX_PAGE_SIZE: u32 = 1_000;

/// Most movies a list without `limit` holds. The original API answers every movie at once; up to
/// this many it still does. Beyond, the answer holds the first ones and its `Link` header gives
/// the next page, rather than a reply of unbounded size.
pub const LIST_CAP: u32 = 10_000;

/// A movie as stored and as answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Movie {
    pub id: i64,
    pub title: String,
    /// Absent descriptions are `null`.
    pub description: Option<String>,
}

/// Routes of the catalogue.
pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/api/movies",
            get(list_movies)
                .post(create_movie)
                .delete(delete_all_movies),
        )
        .route(
            "/api/movies/{id}",
            get(get_movie).put(update_movie).delete(delete_movie),
        )
}

/// The body of `POST` and `PUT`, before validation. Each field distinguishes "absent" (`None`)
/// from "null" (`Some(None)`), which a partial update needs. Unknown fields are ignored so that a
/// client sending back a whole movie, `id` included, is not refused.
///
/// Deserialised by hand because serde's derive would also accept a JSON array (`["Alien"]`) as a
/// movie; only a JSON object is.
#[derive(Debug, Default)]
pub struct MovieFields {
    title: Option<Option<String>>,
    description: Option<Option<String>>,
}

impl<'de> Deserialize<'de> for MovieFields {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(MovieFieldsVisitor)
    }
}

struct MovieFieldsVisitor;

impl<'de> Visitor<'de> for MovieFieldsVisitor {
    type Value = MovieFields;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a JSON object with \"title\" and \"description\"")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<MovieFields, A::Error> {
        let mut fields = MovieFields::default();
        while let Some(key) = map.next_key::<String>()? {
            let slot = match key.as_str() {
                "title" => &mut fields.title,
                "description" => &mut fields.description,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            if slot.is_some() {
                return Err(de::Error::custom(format_args!("{key} is given twice")));
            }
            *slot = Some(match map.next_value::<serde_json::Value>()? {
                serde_json::Value::Null => None,
                serde_json::Value::String(text) => Some(text),
                _ => {
                    return Err(de::Error::custom(format_args!(
                        "{key} must be a string or null"
                    )))
                }
            });
        }
        Ok(fields)
    }
}

/// A validated new movie.
#[derive(Debug)]
struct NewMovie {
    title: String,
    description: Option<String>,
}

/// A validated partial update: `None` leaves a field as it is.
#[derive(Debug)]
struct MovieChanges {
    title: Option<String>,
    description: Option<Option<String>>,
}

impl MovieFields {
    fn into_new_movie(self) -> Result<NewMovie> {
        let title = match self.title {
            Some(Some(title)) => validate_title(&title)?,
            None | Some(None) => return Err(Error::Validation("title is required".to_owned())),
        };
        let description = self
            .description
            .flatten()
            .map(validate_description)
            .transpose()?;
        Ok(NewMovie { title, description })
    }

    fn into_changes(self) -> Result<MovieChanges> {
        let title = match self.title {
            None => None,
            Some(None) => {
                return Err(Error::Validation("title must not be null".to_owned()));
            }
            Some(Some(title)) => Some(validate_title(&title)?),
        };
        let description = match self.description {
            None => None,
            Some(description) => Some(description.map(validate_description).transpose()?),
        };
        Ok(MovieChanges { title, description })
    }
}

/// The characters a title is trimmed of: ASCII spaces, tabs, line breaks, vertical tab and form
/// feed, exactly the class `openapi.yaml`'s title pattern names (Unicode spaces are kept, so the
/// schema and the code agree on every input).
fn is_title_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\u{b}' | '\u{c}')
}

/// Checks the title as sent is at most [`MAX_TITLE_CHARS`] characters, has something besides
/// spaces and no NUL, and returns it trimmed.
fn validate_title(title: &str) -> Result<String> {
    if title.chars().count() > MAX_TITLE_CHARS {
        return Err(Error::Validation(format!(
            "title must be at most {MAX_TITLE_CHARS} characters"
        )));
    }
    let title = title.trim_matches(is_title_space);
    if title.is_empty() {
        return Err(Error::Validation("title must not be empty".to_owned()));
    }
    reject_nul("title", title)?;
    Ok(title.to_owned())
}

/// Checks the description is at most [`MAX_DESCRIPTION_CHARS`] characters; kept as sent.
fn validate_description(description: String) -> Result<String> {
    if description.chars().count() > MAX_DESCRIPTION_CHARS {
        return Err(Error::Validation(format!(
            "description must be at most {MAX_DESCRIPTION_CHARS} characters"
        )));
    }
    reject_nul("description", &description)?;
    Ok(description)
}

/// PostgreSQL text cannot hold U+0000: refuse it here as a client error rather than let the
/// database fail with a 500.
fn reject_nul(field: &str, value: &str) -> Result<()> {
    if value.contains('\0') {
        return Err(Error::Validation(format!(
            "{field} must not contain NUL characters"
        )));
    }
    Ok(())
}

/// The query string of `GET /api/movies`.
#[derive(Debug, Deserialize)]
pub struct ListParams {
    /// Case-insensitive substring of the title; `%`, `_` and `\` match themselves.
    title: Option<String>,
    /// Page size, 1 to [`MAX_PAGE_SIZE`]; without it, up to [`LIST_CAP`] movies.
    limit: Option<u32>,
    /// The page after this id (the cursor a `Link: rel="next"` carries): movies with a greater id.
    after: Option<i64>,
}

/// `Link: </api/movies?…>; rel="next"`: the same query from the last movie of this page on.
fn next_page_link(params: &ListParams, last_id: i64) -> Option<HeaderValue> {
    let mut query = form_urlencoded::Serializer::new(String::new());
    if let Some(title) = &params.title {
        query.append_pair("title", title);
    }
    if let Some(limit) = params.limit {
        query.append_pair("limit", &limit.to_string());
    }
    query.append_pair("after", &last_id.to_string());
    HeaderValue::from_str(&format!("</api/movies?{}>; rel=\"next\"", query.finish())).ok()
}

/// Turns a substring into an `ILIKE … ESCAPE '\'` pattern in which the wildcard characters of the
/// substring match literally.
fn contains_pattern(substring: &str) -> String {
    let mut pattern = String::with_capacity(substring.len() + 2);
    pattern.push('%');
    for c in substring.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// `GET /api/movies[?title=x][&limit=n][&after=id]`: the movies (those whose title contains `x`),
/// ordered by id, a page at a time when asked (`limit`), up to [`LIST_CAP`] otherwise; when more
/// follow, `Link: <…>; rel="next"` says where.
#[instrument(skip(state))]
async fn list_movies(
    State(state): State<AppState>,
    Query(params): Query<ListParams>,
) -> Result<(HeaderMap, axum::Json<Vec<Movie>>)> {
    let pattern = match &params.title {
        Some(title) => {
            if title.contains('\0') {
                return Err(Error::InvalidQuery(
                    "title must not contain NUL characters".to_owned(),
                ));
            }
            Some(contains_pattern(title))
        }
        None => None,
    };
    let limit = match params.limit {
        Some(limit) if !(1..=MAX_PAGE_SIZE).contains(&limit) => {
            return Err(Error::InvalidQuery(format!(
                "limit must be between 1 and {MAX_PAGE_SIZE}, not {limit}"
            )));
        }
        Some(limit) => limit,
        None => LIST_CAP,
    };
    if params.after.is_some_and(|after| after < 0) {
        return Err(Error::InvalidQuery(
            "after must be a movie id (0 or more)".to_owned(),
        ));
    }
    // One more than the page: whether there is a next page, without counting every row.
    let mut movies = sqlx::query_as::<_, Movie>(
        r"SELECT id, title, description FROM movies
          WHERE ($1::text IS NULL OR title ILIKE $1 ESCAPE '\') AND ($2::bigint IS NULL OR id > $2)
          ORDER BY id
          LIMIT $3",
    )
    .bind(pattern)
    .bind(params.after)
    .bind(i64::from(limit) + 1)
    .fetch_all(&state.db)
    .await?;
    let mut headers = HeaderMap::new();
    if movies.len() > limit as usize {
        movies.truncate(limit as usize);
        let last = movies.last().map_or(0, |movie| movie.id);
        if let Some(link) = next_page_link(&params, last) {
            headers.insert(header::LINK, link);
        }
    }
    Ok((headers, axum::Json(movies)))
}

/// `POST /api/movies`: 201 with the movie and its `Location`.
// The body is left out of the span: a description can be 10 000 characters.
#[instrument(skip(state, fields))]
async fn create_movie(
    State(state): State<AppState>,
    Json(fields): Json<MovieFields>,
) -> Result<(StatusCode, HeaderMap, axum::Json<Movie>)> {
    let new = fields.into_new_movie()?;
    let movie = sqlx::query_as::<_, Movie>(
        "INSERT INTO movies (title, description) VALUES ($1, $2)
         RETURNING id, title, description",
    )
    .bind(&new.title)
    .bind(&new.description)
    .fetch_one(&state.db)
    .await?;
    tracing::info!(id = movie.id, "movie created");
    let mut headers = HeaderMap::new();
    let location = HeaderValue::from_str(&format!("/api/movies/{}", movie.id))
        .map_err(|err| Error::Internal(format!("location header: {err}")))?;
    headers.insert(header::LOCATION, location);
    Ok((StatusCode::CREATED, headers, axum::Json(movie)))
}

/// `GET /api/movies/{id}`: 200 or 404.
#[instrument(skip(state))]
async fn get_movie(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<axum::Json<Movie>> {
    let movie =
        sqlx::query_as::<_, Movie>("SELECT id, title, description FROM movies WHERE id = $1")
            .bind(id)
            .fetch_optional(&state.db)
            .await?
            .ok_or_else(|| not_found(id))?;
    Ok(axum::Json(movie))
}

/// `PUT /api/movies/{id}`: changes only the fields given; 200 with the movie, or 404.
#[instrument(skip(state, fields))]
async fn update_movie(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Json(fields): Json<MovieFields>,
) -> Result<axum::Json<Movie>> {
    let changes = fields.into_changes()?;
    let movie = sqlx::query_as::<_, Movie>(
        "UPDATE movies
         SET title = COALESCE($2, title),
             description = CASE WHEN $3 THEN $4 ELSE description END
         WHERE id = $1
         RETURNING id, title, description",
    )
    .bind(id)
    .bind(&changes.title)
    .bind(changes.description.is_some())
    .bind(changes.description.flatten())
    .fetch_optional(&state.db)
    .await?
    .ok_or_else(|| not_found(id))?;
    tracing::info!(id, "movie updated");
    Ok(axum::Json(movie))
}

/// `DELETE /api/movies/{id}`: 200 with a message, or 404.
#[instrument(skip(state))]
async fn delete_movie(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<axum::Json<Value>> {
    let deleted = sqlx::query("DELETE FROM movies WHERE id = $1")
        .bind(id)
        .execute(&state.db)
        .await?
        .rows_affected();
    if deleted == 0 {
        return Err(not_found(id));
    }
    tracing::info!(id, "movie deleted");
    Ok(axum::Json(json!({
        "message": format!("movie {id} deleted"),
        "id": id,
    })))
}

/// `DELETE /api/movies`: deletes every movie; 200 with how many.
#[instrument(skip(state))]
async fn delete_all_movies(State(state): State<AppState>) -> Result<axum::Json<Value>> {
    let deleted = sqlx::query("DELETE FROM movies")
        .execute(&state.db)
        .await?
        .rows_affected();
    tracing::info!(deleted, "all movies deleted");
    Ok(axum::Json(json!({
        "message": format!("{deleted} movies deleted"),
        "deleted": deleted,
    })))
}

fn not_found(id: i64) -> Error {
    Error::NotFound(format!("movie {id} does not exist"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_pattern_escapes_wildcards_and_backslash() {
        assert_eq!(contains_pattern("matrix"), "%matrix%");
        assert_eq!(contains_pattern(r"100%_\x"), r"%100\%\_\\x%");
    }

    #[test]
    fn title_is_trimmed_and_bounded_in_characters_not_bytes() {
        assert_eq!(validate_title("  Alien ").expect("valid"), "Alien");
        assert!(validate_title(" \t ").is_err());
        assert!(validate_title(&"é".repeat(MAX_TITLE_CHARS)).is_ok());
        let err = validate_title(&"x".repeat(MAX_TITLE_CHARS + 1)).expect_err("too long");
        assert!(err.to_string().contains("255"), "{err}");
    }
}

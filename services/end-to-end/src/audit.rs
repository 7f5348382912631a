//! The audit of the original design, as a user runs it through a gateway: the HTTP steps shared
//! by the audit on local binaries (`tests/audit.rs`) and the audit of a deployed platform (the
//! `audit` binary, which `scripts/lab-e2e` runs between its machine-level checks, such as the rows
//! on the database machines). Each step checks every answer and says what it saw.

use anyhow::{ensure, Context, Result};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// A gateway and the client the audit talks to it with.
#[derive(Debug, Clone)]
pub struct Gateway {
    client: reqwest::Client,
    url: String,
}

/// A movie as the API returned it after the update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Movie {
    pub id: i64,
    pub title: String,
}

impl Gateway {
    /// `url` is the gateway's base URL, e.g. `http://127.0.0.1:8080`.
    pub fn new(client: reqwest::Client, url: &str) -> Self {
        Self {
            client,
            url: url.trim_end_matches('/').to_owned(),
        }
    }

    fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    async fn get_json(&self, path: &str) -> Result<Value> {
        let response = self.client.get(self.at(path)).send().await?;
        let status = response.status();
        ensure!(status == StatusCode::OK, "GET {path}: {status}");
        response
            .json()
            .await
            .with_context(|| format!("GET {path}: no JSON"))
    }

    /// Section 5 of the original design up to the update, for a movie titled
    /// `The Matrix {tag}`: create (201), list (it is there), search by title in another case
    /// (exactly it) and a search that misses (nothing), get by id, partial update of the title (the
    /// description kept). Returns the movie as updated, `The Matrix Reloaded {tag}`.
    pub async fn movie_until_update(&self, tag: &str) -> Result<Movie> {
        let title = format!("The Matrix {tag}");
        let description = "A hacker learns the nature of his reality.";
        let created = self
            .client
            .post(self.at("/api/movies"))
            .json(&json!({"title": title, "description": description}))
            .send()
            .await?;
        ensure!(
            created.status() == StatusCode::CREATED,
            "POST /api/movies: {}",
            created.status()
        );
        let movie: Value = created.json().await?;
        let id = movie["id"]
            .as_i64()
            .context("the created movie has no integer id")?;
        ensure!(movie["title"] == title.as_str(), "created: {movie}");
        eprintln!("ok - created movie {id} (201)");

        let list = self.get_json("/api/movies").await?;
        ensure!(
            list.as_array()
                .is_some_and(|movies| movies.iter().any(|m| m["id"] == id)),
            "the list lacks movie {id}: {list}"
        );
        eprintln!("ok - the list contains it");

        let found = self
            .get_json(&format!("/api/movies?title={}", tag.to_uppercase()))
            .await?;
        ensure!(
            found
                .as_array()
                .is_some_and(|m| m.len() == 1 && m[0]["id"] == id),
            "a case-insensitive search by title should find exactly movie {id}: {found}"
        );
        let none = self
            .get_json(&format!("/api/movies?title=zzz-no-such-{tag}"))
            .await?;
        ensure!(
            none.as_array().is_some_and(Vec::is_empty),
            "a search that matches nothing: {none}"
        );
        eprintln!("ok - search by title finds exactly it, and a miss finds nothing");

        let got = self.get_json(&format!("/api/movies/{id}")).await?;
        ensure!(got["title"] == title.as_str(), "GET by id: {got}");
        eprintln!("ok - get by id");

        let reloaded = format!("The Matrix Reloaded {tag}");
        let updated = self
            .client
            .put(self.at(&format!("/api/movies/{id}")))
            .json(&json!({"title": reloaded}))
            .send()
            .await?;
        ensure!(
            updated.status() == StatusCode::OK,
            "PUT /api/movies/{id}: {}",
            updated.status()
        );
        let updated: Value = updated.json().await?;
        ensure!(updated["title"] == reloaded.as_str(), "update: {updated}");
        ensure!(
            updated["description"] == description,
            "a partial update must keep the description: {updated}"
        );
        eprintln!("ok - partial update of the title (description kept)");
        Ok(Movie {
            id,
            title: reloaded,
        })
    }

    /// Deletes movie `id` (2xx), then its GET is a 404 in the platform's JSON error shape.
    pub async fn delete_movie(&self, id: i64) -> Result<()> {
        let path = format!("/api/movies/{id}");
        let deleted = self.client.delete(self.at(&path)).send().await?;
        ensure!(
            deleted.status().is_success(),
            "DELETE {path}: {}",
            deleted.status()
        );
        let gone = self.client.get(self.at(&path)).send().await?;
        ensure!(
            gone.status() == StatusCode::NOT_FOUND,
            "GET {path} after DELETE: {}",
            gone.status()
        );
        let gone: Value = gone.json().await?;
        ensure!(
            gone["error"] == "not_found" && gone["message"].is_string(),
            "the 404 has the JSON error shape: {gone}"
        );
        eprintln!("ok - deleted movie {id}; 404 (not_found) afterwards");
        Ok(())
    }

    /// Posts a billing order; it must be accepted (202, the broker confirmed it). Returns its id.
    pub async fn post_order(&self, order: &Value) -> Result<String> {
        let response = self
            .client
            .post(self.at("/api/billing"))
            .json(order)
            .send()
            .await?;
        let status = response.status();
        let body: Value = response.json().await?;
        ensure!(
            status == StatusCode::ACCEPTED,
            "POST /api/billing: {status} {body}"
        );
        let id = body["id"].as_str().context("the 202 body has no id")?;
        Ok(id.to_owned())
    }
}

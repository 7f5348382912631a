//! Optional bearer tokens on the writing methods (off unless `AUTH_JWT_SECRET` is set, so the
//! original API and its audit work unchanged): POST, PUT and DELETE on `/api/movies…` need a JWT
//! signed with the secret (HS256, `exp` required) whose `scope` holds `movies:write`; POST
//! `/api/billing` needs `orders:write`. Reads never need one.
//! - no token, or a token that is malformed, expired or badly signed: 401 with
//!   `WWW-Authenticate: Bearer …` (RFC 6750);
//! - a valid token without the scope: 403, the header naming the scope.
//!
//! Tokens and the secret are never logged.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::config::JwtSecret;
use crate::error::Error;

/// Scope of the movie catalogue's writes.
pub const MOVIES_WRITE: &str = "movies:write";
/// Scope of placing orders.
pub const ORDERS_WRITE: &str = "orders:write";

/// The key and rules every token is checked against; cheap to clone.
#[derive(Clone)]
pub struct Auth {
    key: Arc<DecodingKey>,
    validation: Arc<Validation>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Auth(HS256)")
    }
}

#[derive(Deserialize)]
struct Claims {
    /// Space-separated scopes (RFC 8693 `scope`).
    #[serde(default)]
    scope: String,
}

impl Auth {
    pub fn new(secret: &JwtSecret) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp"]);
        validation.leeway = 5;
        Self {
            key: Arc::new(DecodingKey::from_secret(secret.expose())),
            validation: Arc::new(validation),
        }
    }

    /// The scopes of a valid token, or why it is not one (for the 401's description).
    fn scopes(&self, token: &str) -> Result<Vec<String>, String> {
        let claims = decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|error| match error.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                    "the token has expired".to_owned()
                }
                jsonwebtoken::errors::ErrorKind::InvalidSignature => {
                    "the token's signature is not valid".to_owned()
                }
                jsonwebtoken::errors::ErrorKind::MissingRequiredClaim(claim) => {
                    format!("the token has no `{claim}` claim")
                }
                _ => "the token is not a valid HS256 JWT".to_owned(),
            })?
            .claims;
        Ok(claims.scope.split_whitespace().map(str::to_owned).collect())
    }
}

/// The scope `method` on `path` needs; `None` for reads.
fn required_scope(method: &Method, path: &str) -> Option<&'static str> {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return None;
    }
    if path.starts_with("/api/billing") {
        Some(ORDERS_WRITE)
    } else {
        Some(MOVIES_WRITE)
    }
}

/// The middleware: a writing request without a token carrying its scope ends here.
pub async fn enforce(State(auth): State<Auth>, request: Request, next: Next) -> Response {
    let Some(scope) = required_scope(request.method(), request.uri().path()) else {
        return next.run(request).await;
    };
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("bearer "))
        })
        .map(str::trim);
    let Some(token) = token else {
        return Error::Unauthenticated {
            reason: format!("this request needs a bearer token with the scope `{scope}`"),
            presented: false,
        }
        .into_response();
    };
    match auth.scopes(token) {
        Err(reason) => Error::Unauthenticated {
            reason,
            presented: true,
        }
        .into_response(),
        Ok(scopes) if scopes.iter().any(|granted| granted == scope) => next.run(request).await,
        Ok(_) => Error::Forbidden { scope }.into_response(),
    }
}

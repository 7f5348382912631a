//! Optional bearer tokens on the writing methods (off unless `AUTH_JWT_SECRET` or
//! `AUTH_JWT_PUBLIC_KEY_FILE` is set, so the original API and its audit work unchanged): POST, PUT
//! and DELETE on `/api/movies…` need a JWT (`exp` required), signed with the shared secret
//! (HS256) or by the holder of the RSA private key (RS256, checked with its public key), whose
//! `scope` holds `movies:write`; POST `/api/billing` needs `orders:write`. Reads never need one.
//! Only the configured algorithm is accepted: an HS256 token never passes an RS256 gateway.
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
    algorithm: Algorithm,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Auth({:?})", self.algorithm)
    }
}

#[derive(Deserialize)]
struct Claims {
    /// Space-separated scopes (RFC 8693 `scope`).
    #[serde(default)]
    scope: String,
}

impl Auth {
    /// Tokens signed HS256 with `secret`.
    pub fn new(secret: &JwtSecret) -> Self {
        Self::with_key(DecodingKey::from_secret(secret.expose()), Algorithm::HS256)
    }

    /// Tokens signed RS256, checked with the RSA public key in `pem`.
    pub fn rs256(pem: &[u8]) -> Result<Self, String> {
        let key = DecodingKey::from_rsa_pem(pem)
            .map_err(|error| format!("not an RSA public key in PEM: {error}"))?;
        Ok(Self::with_key(key, Algorithm::RS256))
    }

    /// What the configuration asks for: the secret, else the public key file, else nothing.
    pub fn from_config(config: &crate::Config) -> anyhow::Result<Option<Self>> {
        use anyhow::Context as _;
        if let Some(secret) = &config.auth_jwt_secret {
            return Ok(Some(Self::new(secret)));
        }
        let Some(path) = &config.auth_jwt_public_key_file else {
            return Ok(None);
        };
        let pem = std::fs::read(path)
            .with_context(|| format!("AUTH_JWT_PUBLIC_KEY_FILE {}", path.display()))?;
        Self::rs256(&pem).map(Some).map_err(|problem| {
            anyhow::anyhow!("AUTH_JWT_PUBLIC_KEY_FILE {}: {problem}", path.display())
        })
    }

    fn with_key(key: DecodingKey, algorithm: Algorithm) -> Self {
        let mut validation = Validation::new(algorithm);
        validation.set_required_spec_claims(&["exp"]);
        validation.leeway = 5;
        Self {
            key: Arc::new(key),
            validation: Arc::new(validation),
            algorithm,
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
                jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => {
                    format!("the token is not signed {:?}", self.algorithm)
                }
                _ => format!("the token is not a valid {:?} JWT", self.algorithm),
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

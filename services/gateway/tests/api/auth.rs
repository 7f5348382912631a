//! Optional bearer tokens (HS256 or RS256 JWT) on the writing methods, against a real gateway: reads stay
//! open; a write without a valid token is a JSON 401 with `WWW-Authenticate`; a valid token
//! without the scope is a 403 naming it; the right scope passes.

use std::time::{SystemTime, UNIX_EPOCH};

use clap::Parser;
use jsonwebtoken::{encode, EncodingKey, Header};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{config, echo_app, serve, TestGateway, DEAD_BROKER};

const SECRET: &str = "a-test-secret-of-at-least-32-bytes!";

/// The gateway's configuration with `AUTH_JWT_SECRET` given, as its command line parses it.
fn parse(secret: &str) -> Result<gateway::Config, clap::Error> {
    parse_with(&["--auth-jwt-secret", secret])
}

/// The gateway's configuration from its command line, with these arguments after the URLs.
fn parse_with(arguments: &[&str]) -> Result<gateway::Config, clap::Error> {
    let urls = [
        "gateway",
        "--inventory-url",
        "http://127.0.0.1:9",
        "--amqp-url",
        "amqp://127.0.0.1:9/%2f",
    ];
    gateway::Config::try_parse_from(urls.iter().chain(arguments))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(secret: &str, claims: &Value) -> String {
    encode(
        &Header::default(),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

async fn send(
    gateway: &TestGateway,
    method: Method,
    path: &str,
    bearer: Option<&str>,
) -> reqwest::Response {
    let mut request = gateway
        .client
        .request(method, gateway.url(path))
        .header("content-type", "application/json")
        .body(
            r#"{"user_id": "usr_auth", "number_of_items": 1, "total_amount": 1.5, "title": "t"}"#,
        );
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

/// The status, the `WWW-Authenticate` header and the JSON error code of an answer.
async fn refusal(response: reqwest::Response) -> (StatusCode, String, String) {
    let status = response.status();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|value| value.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body: Value = response.json().await.unwrap();
    (
        status,
        challenge,
        body["error"].as_str().unwrap_or_default().to_owned(),
    )
}

#[tokio::test]
async fn writes_need_a_token_with_their_scope_and_reads_need_none() {
    let upstream = serve(echo_app("authed")).await;
    let mut config = config(&[upstream], DEAD_BROKER, "unused");
    config.auth_jwt_secret = parse(SECRET).map(|config| config.auth_jwt_secret).unwrap();
    let gateway = TestGateway::spawn(config).await;
    let movies = token(
        SECRET,
        &json!({"scope": "movies:write", "exp": now() + 300}),
    );
    let orders = token(
        SECRET,
        &json!({"scope": "orders:write", "exp": now() + 300}),
    );

    // Reads: open.
    assert_eq!(
        send(&gateway, Method::GET, "/api/movies", None)
            .await
            .status(),
        StatusCode::OK
    );

    // No token: 401 with a challenge.
    let (status, challenge, code) =
        refusal(send(&gateway, Method::POST, "/api/movies", None).await).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    assert_eq!(challenge, r#"Bearer realm="streaming-platform""#);

    // Tokens that are not valid: 401, invalid_token.
    for bad in [
        "not-a-jwt".to_owned(),
        token(
            "another-secret-of-at-least-32-bytes!!",
            &json!({"scope": "movies:write", "exp": now() + 300}),
        ),
        token(SECRET, &json!({"scope": "movies:write", "exp": now() - 60})),
        token(SECRET, &json!({"scope": "movies:write"})),
    ] {
        let (status, challenge, code) =
            refusal(send(&gateway, Method::PUT, "/api/movies/1", Some(&bad)).await).await;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::UNAUTHORIZED, "unauthorized"),
            "{bad}"
        );
        assert!(
            challenge.contains(r#"error="invalid_token""#),
            "{challenge}"
        );
    }

    // A valid token without the scope: 403 naming it.
    let (status, challenge, code) =
        refusal(send(&gateway, Method::DELETE, "/api/movies/1", Some(&orders)).await).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::FORBIDDEN, "forbidden")
    );
    assert!(
        challenge.contains(r#"error="insufficient_scope", scope="movies:write""#),
        "{challenge}"
    );
    let (status, _, _) =
        refusal(send(&gateway, Method::POST, "/api/billing", Some(&movies)).await).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // The right scope passes: inventory answers the movie writes; the order reaches the publisher
    // (here the broker is absent: 503, not 401 or 403).
    for method in [Method::POST, Method::PUT, Method::DELETE] {
        let path = if method == Method::POST {
            "/api/movies"
        } else {
            "/api/movies/1"
        };
        let response = send(&gateway, method.clone(), path, Some(&movies)).await;
        assert_eq!(response.status(), StatusCode::OK, "{method}");
        assert_eq!(response.headers()["x-upstream"], "authed");
    }
    let response = send(&gateway, Method::POST, "/api/billing", Some(&orders)).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    gateway.stop().await;
}

#[test]
fn a_short_secret_is_refused_without_being_echoed() {
    let error = parse("short-s3cret").expect_err("too short");
    let shown = error.to_string();
    assert!(shown.contains("at least 32"), "{shown}");
    assert!(!shown.contains("short-s3cret"), "{shown}");
}

/// An RSA key pair made by openssl (ring cannot make RSA keys): (private PEM, public key file).
fn rsa_key_pair(dir: &std::path::Path, name: &str) -> (Vec<u8>, std::path::PathBuf) {
    let private = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    let made = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&private)
        .status()
        .unwrap();
    assert!(made.success());
    let made = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(&public)
        .status()
        .unwrap();
    assert!(made.success());
    (std::fs::read(private).unwrap(), public)
}

fn rs256_token(private_pem: &[u8], claims: &Value) -> String {
    encode(
        &Header::new(jsonwebtoken::Algorithm::RS256),
        claims,
        &EncodingKey::from_rsa_pem(private_pem).unwrap(),
    )
    .unwrap()
}

/// RS256: tokens from the holder of the private key pass, with the same scopes; another key's,
/// and an HS256 token made with the public key as its secret (the algorithm confusion), do not.
#[tokio::test]
async fn rs256_tokens_are_checked_with_the_public_key_and_that_algorithm_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (private, public_file) = rsa_key_pair(dir.path(), "issuer");
    let (other_private, _) = rsa_key_pair(dir.path(), "other");
    let upstream = serve(echo_app("authed")).await;
    let mut config = config(&[upstream], DEAD_BROKER, "unused");
    config.auth_jwt_public_key_file = Some(public_file.clone());
    let gateway = TestGateway::spawn(config).await;
    let claims = json!({"scope": "movies:write", "exp": now() + 300});

    let good = rs256_token(&private, &claims);
    let response = send(&gateway, Method::POST, "/api/movies", Some(&good)).await;
    assert_eq!(response.status(), StatusCode::OK);

    let public_pem = std::fs::read_to_string(&public_file).unwrap();
    for bad in [
        rs256_token(&other_private, &claims),
        token(&public_pem, &claims),
        rs256_token(
            &private,
            &json!({"scope": "orders:write", "exp": now() + 300}),
        ),
    ] {
        let status = send(&gateway, Method::POST, "/api/movies", Some(&bad))
            .await
            .status();
        assert!(
            status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN,
            "{status}"
        );
    }
    let (status, _, _) = refusal(
        send(
            &gateway,
            Method::POST,
            "/api/movies",
            Some(&token(&public_pem, &claims)),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "HS256 is not RS256");
    gateway.stop().await;
}

#[tokio::test]
async fn a_public_key_file_that_is_no_rsa_key_stops_the_start_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-key.pem");
    std::fs::write(
        &file,
        "-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n",
    )
    .unwrap();
    let mut config = config(&["http://127.0.0.1:9".to_owned()], DEAD_BROKER, "unused");
    config.auth_jwt_public_key_file = Some(file);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let error = gateway::run(config, listener, std::future::pending())
        .await
        .expect_err("refused")
        .to_string();
    assert!(
        error.contains("AUTH_JWT_PUBLIC_KEY_FILE") && error.contains("not-a-key.pem"),
        "{error}"
    );
}

#[test]
fn a_secret_and_a_public_key_together_are_refused() {
    let error = parse_with(&[
        "--auth-jwt-secret",
        SECRET,
        "--auth-jwt-public-key-file",
        "/etc/gateway/jwt.pub",
    ])
    .expect_err("one or the other");
    assert!(!error.to_string().contains(SECRET), "{error}");
}

//! The real server: `inventory::run` on a loopback listener, spoken to over TCP, then shut down.

use std::time::Duration;

use inventory::{Config, DatabaseUrl};
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running server, the address it listens on, and the switch that stops it.
struct Server {
    base_url: String,
    address: std::net::SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

async fn spawn_server(db: &PgPool) -> Server {
    spawn_server_with(db, inventory::ServerArgs::default()).await
}

/// The server with the given client limits.
async fn spawn_server_with(db: &PgPool, server: inventory::ServerArgs) -> Server {
    let config = Config {
        database_url: DatabaseUrl::from((*db.connect_options()).clone()),
        listen_addr: "127.0.0.1:0".parse().expect("valid address"),
        server,
        tls: Default::default(),
    };
    let listener = TcpListener::bind(config.listen_addr)
        .await
        .expect("bind a loopback port");
    let address = listener.local_addr().expect("local address");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(inventory::run(config, listener, async {
        let _ = stopped.await;
    }));
    Server {
        base_url: format!("http://{address}"),
        address,
        stop,
        task,
    }
}

/// Signals shutdown and asserts `run` returns `Ok` promptly.
async fn stop(server: Server) {
    let _ = server.stop.send(());
    tokio::time::timeout(Duration::from_secs(10), server.task)
        .await
        .expect("run returns within 10s of the shutdown signal")
        .expect("the server task does not panic")
        .expect("run returns Ok after a graceful shutdown");
}

#[sqlx::test(migrator = "inventory::MIGRATOR")]
async fn serves_the_api_over_http_and_stops_on_signal(db: PgPool) {
    let server = spawn_server(&db).await;
    let client = reqwest::Client::new();
    let base = &server.base_url;

    let created = client
        .post(format!("{base}/api/movies"))
        .json(&json!({"title": "The Matrix", "description": "red pill"}))
        .send()
        .await
        .expect("POST answers");
    assert_eq!(created.status(), reqwest::StatusCode::CREATED);
    let location = created.headers()["location"]
        .to_str()
        .expect("ascii")
        .to_owned();
    let movie: Value = created.json().await.expect("JSON movie");

    let fetched: Value = client
        .get(format!("{base}{location}"))
        .send()
        .await
        .expect("GET answers")
        .json()
        .await
        .expect("JSON movie");
    assert_eq!(fetched, movie);

    let search: Value = client
        .get(format!("{base}/api/movies?title=MATRIX"))
        .send()
        .await
        .expect("search answers")
        .json()
        .await
        .expect("JSON list");
    assert_eq!(search, json!([movie]));

    let ready = client
        .get(format!("{base}/ready"))
        .send()
        .await
        .expect("ready answers");
    assert_eq!(ready.status(), reqwest::StatusCode::OK);

    let address = server.address;
    stop(server).await;
    assert!(
        TcpStream::connect(address).await.is_err(),
        "the port is closed once run returns"
    );
}

#[sqlx::test(migrator = "inventory::MIGRATOR")]
async fn a_request_in_flight_at_shutdown_is_completed(db: PgPool) {
    let server = spawn_server(&db).await;
    let body = json!({"title": "Heat"}).to_string();
    let (first_half, second_half) = body.split_at(body.len() / 2);

    // Send the headers and half the body, so the request is in the server's hands when the
    // shutdown signal arrives.
    let mut stream = TcpStream::connect(server.address).await.expect("connect");
    let head = format!(
        "POST /api/movies HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        server.address,
        body.len()
    );
    stream.write_all(head.as_bytes()).await.expect("write head");
    stream
        .write_all(first_half.as_bytes())
        .await
        .expect("write first half");
    tokio::time::sleep(Duration::from_millis(300)).await;

    let _ = server.stop.send(());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !server.task.is_finished(),
        "run waits for the request in flight"
    );

    stream
        .write_all(second_half.as_bytes())
        .await
        .expect("write second half");
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut answer))
        .await
        .expect("the answer comes, and the connection closes")
        .expect("read the answer");
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    assert!(answer.contains(r#""title":"Heat""#), "{answer}");

    tokio::time::timeout(Duration::from_secs(10), server.task)
        .await
        .expect("run returns once the request is answered")
        .expect("no panic")
        .expect("run returns Ok");
    let titles: Vec<String> = sqlx::query_scalar("SELECT title FROM movies")
        .fetch_all(&db)
        .await
        .expect("query the test database");
    assert_eq!(titles, ["Heat"]);
}

#[sqlx::test(migrator = "inventory::MIGRATOR")]
async fn a_trailing_slash_means_the_same_as_none(db: PgPool) {
    let server = spawn_server(&db).await;
    let client = reqwest::Client::new();
    let base = &server.base_url;

    let created = client
        .post(format!("{base}/api/movies/"))
        .json(&json!({"title": "Alien"}))
        .send()
        .await
        .expect("POST answers");
    assert_eq!(created.status(), reqwest::StatusCode::CREATED);
    let movie: Value = created.json().await.expect("JSON movie");
    let id = movie["id"].as_i64().expect("id");

    let list: Value = client
        .get(format!("{base}/api/movies/?title=alien"))
        .send()
        .await
        .expect("GET answers")
        .json()
        .await
        .expect("JSON list");
    assert_eq!(list, json!([movie]));
    let one = client
        .get(format!("{base}/api/movies/{id}/"))
        .send()
        .await
        .expect("GET answers");
    assert_eq!(one.status(), reqwest::StatusCode::OK);
    let deleted = client
        .delete(format!("{base}/api/movies/{id}/"))
        .send()
        .await
        .expect("DELETE answers");
    assert!(deleted.status().is_success(), "{}", deleted.status());
    let health = client
        .get(format!("{base}/health/"))
        .send()
        .await
        .expect("health answers");
    assert_eq!(health.status(), reqwest::StatusCode::OK);
    stop(server).await;
}

#[sqlx::test(migrator = "inventory::MIGRATOR")]
async fn a_body_that_stops_is_408_and_unfinished_headers_are_closed(db: PgPool) {
    let server = spawn_server_with(
        &db,
        inventory::ServerArgs {
            header_read_timeout_ms: 1_000,
            body_read_timeout_ms: 1_000,
            ..inventory::ServerArgs::default()
        },
    )
    .await;
    let address = server.address;
    let mut stalled = TcpStream::connect(address).await.expect("connect");
    stalled
        .write_all(
            b"POST /api/movies HTTP/1.1\r\nHost: inventory\r\nContent-Type: application/json\r\n\
              Content-Length: 100\r\n\r\n{\"title\": ",
        )
        .await
        .expect("write");
    let mut unfinished = TcpStream::connect(address).await.expect("connect");
    unfinished
        .write_all(b"GET /health HTTP/1.1\r\nHost: inventory\r\n")
        .await
        .expect("write");

    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stalled.read_to_end(&mut answer))
        .await
        .expect("answered within 5 s")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""error":"request_timeout""#), "{answer}");
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), unfinished.read_to_end(&mut rest))
        .await
        .expect("the connection with unfinished headers is closed within 5 s")
        .expect("read");

    stop(server).await;
}

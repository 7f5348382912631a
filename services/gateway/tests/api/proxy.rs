//! `/api/movies` reaches inventory unchanged and inventory's answers come back unchanged; inventory
//! down or slow becomes a quick JSON error; several instances share the load and a dead one is
//! skipped; a safe request that got no answer is retried once, any other never; kept-alive
//! connections are reused, and one the instance closed, or said it closes, is not; answers in
//! chunks, until the connection ends, or after an interim answer come back whole, and one that
//! is not HTTP is a JSON 502.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::helpers::{
    config, dead_upstream, echo_app, echoed_header, serve, TestGateway, DEAD_BROKER,
};

async fn gateway_in_front_of(upstreams: &[String]) -> TestGateway {
    TestGateway::spawn(config(upstreams, DEAD_BROKER, "unused")).await
}

#[tokio::test]
async fn forwards_method_path_query_body_and_end_to_end_headers() {
    let upstream = serve(echo_app("a")).await;
    let gateway = gateway_in_front_of(&[upstream]).await;

    let response = gateway
        .client
        .post(gateway.url("/api/movies/42/extra?title=The%20Matrix&x=1&x=2&empty="))
        .header("content-type", "application/json; charset=utf-8")
        .header("x-custom", "end-to-end")
        .header("authorization", "Bearer abc")
        .header("connection", "x-client-hop")
        .header("x-client-hop", "must not pass")
        .header("te", "trailers")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("x-request-id", "req-123")
        .header("x-echo-status", "201")
        .body(r#"{"title": "The Matrix", "bytes": "é\u0000"}"#)
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::CREATED);
    let headers = response.headers().clone();
    assert_eq!(
        headers["x-upstream"], "a",
        "end-to-end response header kept"
    );
    assert_eq!(headers["x-request-id"], "req-123", "request id echoed back");
    for hop in ["x-upstream-hop", "keep-alive", "proxy-authenticate"] {
        assert!(
            !headers.contains_key(hop),
            "hop-by-hop {hop} leaked: {headers:?}"
        );
    }
    let echo: Value = response.json().await.unwrap();
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/api/movies/42/extra");
    assert_eq!(echo["query"], "title=The%20Matrix&x=1&x=2&empty=");
    assert_eq!(
        echo["body"],
        r#"{"title": "The Matrix", "bytes": "é\u0000"}"#
    );
    assert_eq!(
        echoed_header(&echo, "content-type"),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(echoed_header(&echo, "x-custom"), Some("end-to-end"));
    assert_eq!(echoed_header(&echo, "authorization"), Some("Bearer abc"));
    assert_eq!(echoed_header(&echo, "x-request-id"), Some("req-123"));
    assert_eq!(echoed_header(&echo, "x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(echoed_header(&echo, "x-forwarded-proto"), Some("http"));
    assert_eq!(
        echoed_header(&echo, "x-forwarded-host"),
        Some(gateway.address.to_string().as_str())
    );
    for hop in ["x-client-hop", "te", "proxy-authorization"] {
        assert_eq!(
            echoed_header(&echo, hop),
            None,
            "hop-by-hop {hop} forwarded: {echo}"
        );
    }
    // The connection to inventory is the gateway's own: its Host, not the client's.
    assert_ne!(
        echoed_header(&echo, "host"),
        Some(gateway.address.to_string().as_str())
    );
    gateway.stop().await;
}

#[tokio::test]
async fn every_method_and_the_collection_path_are_forwarded() {
    let upstream = serve(echo_app("a")).await;
    let gateway = gateway_in_front_of(&[upstream]).await;
    for (method, path) in [
        (reqwest::Method::GET, "/api/movies"),
        (reqwest::Method::GET, "/api/movies?title=100%25_off"),
        (reqwest::Method::DELETE, "/api/movies"),
        (reqwest::Method::PUT, "/api/movies/7"),
        (reqwest::Method::DELETE, "/api/movies/7"),
        (reqwest::Method::PATCH, "/api/movies/7"),
    ] {
        let response = gateway
            .client
            .request(method.clone(), gateway.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{method} {path}");
        let echo: Value = response.json().await.unwrap();
        assert_eq!(echo["method"], method.as_str());
        let (expected_path, expected_query) = path.split_once('?').unwrap_or((path, ""));
        assert_eq!(echo["path"], expected_path);
        assert_eq!(echo["query"].as_str().unwrap_or(""), expected_query);
        assert!(
            echoed_header(&echo, "x-request-id").is_some(),
            "a request id is always sent"
        );
    }
    gateway.stop().await;
}

#[tokio::test]
async fn upstream_status_codes_and_bodies_come_back_unchanged() {
    let upstream = serve(echo_app("a")).await;
    let gateway = gateway_in_front_of(&[upstream]).await;
    for status in [200_u16, 201, 204, 400, 404, 418, 422, 500, 503] {
        let body = if status == 204 {
            ""
        } else {
            "exactly these bytes {\"not\": json"
        };
        let response = gateway
            .client
            .get(gateway.url("/api/movies/1"))
            .header("x-echo-status", status.to_string())
            .header("x-echo-raw-body", body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status);
        assert_eq!(response.headers()["content-type"], "text/plain");
        assert_eq!(response.text().await.unwrap(), body, "status {status}");
    }
    gateway.stop().await;
}

#[tokio::test]
async fn inventory_down_is_a_quick_json_502_and_serves_again_as_soon_as_it_is_back() {
    let dead = dead_upstream().await;
    let gateway = gateway_in_front_of(std::slice::from_ref(&dead)).await;

    for attempt in 0..2 {
        // The second attempt falls in the instance's cool-off: it is still tried, being the only
        // one, and still answers quickly.
        let started = Instant::now();
        let response = gateway.get("/api/movies").await;
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "attempt {attempt} took {:?}",
            started.elapsed()
        );
        assert_eq!(
            response.status(),
            StatusCode::BAD_GATEWAY,
            "attempt {attempt}"
        );
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "bad_gateway");
        assert!(body["message"].is_string());
    }

    // Inventory comes back on the same address within the cool-off: served at once.
    let address = dead.trim_start_matches("http://");
    let listener = tokio::net::TcpListener::bind(address).await.unwrap();
    tokio::spawn(async move { axum::serve(listener, echo_app("back")).await });
    let response = gateway.get("/api/movies").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-upstream"], "back");
    gateway.stop().await;
}

#[tokio::test]
async fn slow_inventory_is_a_json_504_within_the_timeout() {
    let upstream = serve(echo_app("slow")).await;
    let mut config = config(&[upstream], DEAD_BROKER, "unused");
    config.upstream_timeout_ms = 500;
    let gateway = TestGateway::spawn(config).await;

    let started = Instant::now();
    let response = gateway
        .client
        .get(gateway.url("/api/movies"))
        .header("x-echo-delay-ms", "5000")
        .send()
        .await
        .unwrap();
    let elapsed = started.elapsed();
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(
        elapsed >= Duration::from_millis(450) && elapsed < Duration::from_secs(2),
        "{elapsed:?}"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "gateway_timeout");
    gateway.stop().await;
}

#[tokio::test]
async fn requests_spread_over_instances_and_a_dead_one_is_skipped() {
    let a = serve(echo_app("a")).await;
    let b = serve(echo_app("b")).await;
    let dead = dead_upstream().await;
    let gateway = gateway_in_front_of(&[a, dead, b]).await;

    let mut seen = HashSet::new();
    for i in 0..30 {
        // POST too: a connection that was never made is safe to retry whatever the method.
        let response = gateway
            .client
            .post(gateway.url("/api/movies"))
            .body(format!("request {i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "request {i}");
        let echo: Value = response.json().await.unwrap();
        assert_eq!(echo["body"], format!("request {i}"));
        seen.insert(echo["upstream"].as_str().unwrap().to_owned());
    }
    assert_eq!(seen, HashSet::from(["a".to_owned(), "b".to_owned()]));
    gateway.stop().await;
}

/// Reads one request off `reader`: its head, then the body its Content-Length announces. Returns
/// its request line, or `None` once the gateway has closed the connection.
async fn read_request(reader: &mut BufReader<&mut tokio::net::TcpStream>) -> Option<String> {
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).await.unwrap_or(0) == 0 {
        return None;
    }
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).await.unwrap();
        if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = value.trim().parse().unwrap();
        }
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).await.unwrap();
    Some(request_line.trim().to_owned())
}

/// Answers `[]` on the connection of `reader`; with `close`, saying `Connection: close` first.
async fn answer_empty_list(reader: &mut BufReader<&mut tokio::net::TcpStream>, close: bool) {
    let connection = if close { "connection: close\r\n" } else { "" };
    let answer = format!(
        "HTTP/1.1 200 OK\r\n{connection}content-type: application/json\r\ncontent-length: 2\r\n\r\n[]"
    );
    reader.get_mut().write_all(answer.as_bytes()).await.unwrap();
}

/// An inventory whose first connection reads one request and closes without answering (as an
/// instance does when it closes a kept-alive connection just as a request goes out); every later
/// connection answers `[]`. Returns its URL and the request lines it received.
async fn upstream_dropping_its_first_request() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        for connection in 0.. {
            let (mut stream, _) = listener.accept().await.unwrap();
            let log = log.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(&mut stream);
                while let Some(request_line) = read_request(&mut reader).await {
                    log.lock().unwrap().push(request_line);
                    if connection == 0 {
                        return;
                    }
                    answer_empty_list(&mut reader, false).await;
                }
            });
        }
    });
    (url, seen)
}

#[tokio::test]
async fn a_safe_request_that_got_no_answer_is_retried_once_and_an_unsafe_one_never() {
    // GET: the dropped attempt is sent again, on another connection, and answered.
    let (upstream, seen) = upstream_dropping_its_first_request().await;
    let gateway = gateway_in_front_of(std::slice::from_ref(&upstream)).await;
    let response = gateway.get("/api/movies").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), "[]");
    assert_eq!(
        *seen.lock().unwrap(),
        ["GET /api/movies HTTP/1.1", "GET /api/movies HTTP/1.1"]
    );
    gateway.stop().await;

    // POST: it may have had its effect, so it is not sent twice: a JSON 502.
    let (upstream, seen) = upstream_dropping_its_first_request().await;
    let gateway = gateway_in_front_of(std::slice::from_ref(&upstream)).await;
    let response = gateway
        .client
        .post(gateway.url("/api/movies"))
        .header("content-type", "application/json")
        .body(r#"{"title":"once"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "bad_gateway");
    assert_eq!(*seen.lock().unwrap(), ["POST /api/movies HTTP/1.1"]);
    gateway.stop().await;
}

/// An inventory that answers `[]` to `per_connection` requests on each connection, then closes
/// it; with `announced`, that last answer says `Connection: close`, as an instance does while it
/// shuts down. Returns its URL and the number of connections it accepted so far.
async fn upstream_closing_after(
    per_connection: usize,
    announced: bool,
) -> (String, Arc<AtomicUsize>) {
    counting_upstream(move |mut stream| async move {
        let mut reader = BufReader::new(&mut stream);
        for answered in 1..=per_connection {
            if read_request(&mut reader).await.is_none() {
                return;
            }
            let close = announced && answered == per_connection;
            answer_empty_list(&mut reader, close).await;
        }
    })
    .await
}

/// An inventory each of whose connections `handle` serves. Returns its URL and the number of
/// connections it accepted so far.
async fn counting_upstream<F, Served>(handle: F) -> (String, Arc<AtomicUsize>)
where
    F: Fn(tokio::net::TcpStream) -> Served + Send + 'static,
    Served: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(handle(stream));
        }
    });
    (url, accepted)
}

/// Sends `count` POSTs (never sent twice) one after the other, `pause` apart; each must be
/// answered `[]`.
async fn post_in_turn(gateway: &TestGateway, count: usize, pause: Duration) {
    for n in 0..count {
        let response = gateway
            .client
            .post(gateway.url("/api/movies"))
            .header("content-type", "application/json")
            .body(format!(r#"{{"title":"movie {n}"}}"#))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "request {n}");
        assert_eq!(response.text().await.unwrap(), "[]");
        tokio::time::sleep(pause).await;
    }
}

#[tokio::test]
async fn kept_alive_connections_are_reused_and_one_the_instance_closed_is_not() {
    let (upstream, accepted) = upstream_closing_after(2, false).await;
    let gateway = gateway_in_front_of(&[upstream]).await;
    // With time between them for the gateway to see each close, as between a client's requests.
    post_in_turn(&gateway, 5, Duration::from_millis(100)).await;
    // Two requests per connection: the third connection took the fifth.
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
    gateway.stop().await;
}

#[tokio::test]
async fn a_connection_the_instance_said_it_closes_is_never_taken_again() {
    let (upstream, accepted) = upstream_closing_after(1, true).await;
    let gateway = gateway_in_front_of(&[upstream]).await;
    // One right after the other: each must find that the last connection is done with.
    post_in_turn(&gateway, 5, Duration::ZERO).await;
    assert_eq!(accepted.load(Ordering::SeqCst), 5);
    gateway.stop().await;
}

/// An inventory that answers every request with `answer`, written as is, and closes the connection
/// after it when `close`. Returns its URL and the number of connections it accepted so far.
async fn upstream_answering(answer: &'static str, close: bool) -> (String, Arc<AtomicUsize>) {
    counting_upstream(move |mut stream| async move {
        let mut reader = BufReader::new(&mut stream);
        while read_request(&mut reader).await.is_some() {
            // Written in two parts, so that the gateway reads the answer in more than one.
            let (first, rest) = answer.split_at(answer.len() / 2);
            let stream = reader.get_mut();
            if stream.write_all(first.as_bytes()).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            if stream.write_all(rest.as_bytes()).await.is_err() || close {
                return;
            }
        }
    })
    .await
}

/// Sends two GETs in turn through a gateway in front of an inventory answering `answer` (see
/// [`upstream_answering`]): both must come back 200 with `body`, over `connections` connections
/// to the instance in all.
async fn get_twice(answer: &'static str, close: bool, body: &str, connections: usize) {
    let (upstream, accepted) = upstream_answering(answer, close).await;
    let gateway = gateway_in_front_of(&[upstream]).await;
    for n in 0..2 {
        let response = gateway.get("/api/movies").await;
        assert_eq!(response.status(), StatusCode::OK, "request {n}");
        assert_eq!(response.text().await.unwrap(), body, "request {n}");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), connections, "{answer:?}");
    gateway.stop().await;
}

#[tokio::test]
async fn answers_in_chunks_until_the_end_or_after_an_interim_answer_come_back_whole() {
    // In chunks, with an extension and a trailer: the connection is kept for the next request.
    let chunked =
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n\
                   3;x=y\r\n[1,\r\n2\r\n2]\r\n0\r\nx-trailer: 1\r\n\r\n";
    get_twice(chunked, false, "[1,2]", 1).await;
    // Until the connection ends: each answer takes a connection of its own.
    let until_closed = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n[3]";
    get_twice(until_closed, true, "[3]", 2).await;
    // After a 100 Continue, which the client never sees.
    let interim = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n[4]";
    get_twice(interim, false, "[4]", 1).await;
}

#[tokio::test]
async fn an_answer_that_is_not_http_is_a_json_502_and_one_cut_short_is_not_whole() {
    let (upstream, _) = upstream_answering("SSH-2.0-OpenSSH_9.2p1\r\n\r\n", false).await;
    let gateway = gateway_in_front_of(&[upstream]).await;
    let response = gateway.get("/api/movies").await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "bad_gateway");
    gateway.stop().await;

    // Ten bytes announced, four sent, then the connection ends.
    let (upstream, _) =
        upstream_answering("HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n[1,2", true).await;
    let gateway = gateway_in_front_of(&[upstream]).await;
    // The head may or may not have left the gateway when the cut is found: either way, the client
    // must not take what came for a whole answer.
    match gateway.client.get(gateway.url("/api/movies")).send().await {
        Ok(response) => assert!(
            response.bytes().await.is_err(),
            "a body cut short is not a body"
        ),
        Err(err) => assert!(err.is_request(), "{err}"),
    }
    gateway.stop().await;
}

/// An inventory that answers every request with a 100-byte body sent in ten parts, `pause` apart.
async fn upstream_trickling_its_answer(pause: Duration) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = [0_u8; 4096];
                let _ = stream.read(&mut request).await;
                let head =
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 100\r\n\r\n";
                if stream.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                for _ in 0..10 {
                    if stream.write_all(b"0123456789").await.is_err() {
                        return;
                    }
                    tokio::time::sleep(pause).await;
                }
            });
        }
    });
    url
}

#[tokio::test]
async fn an_answer_that_stalls_is_cut_off_and_one_that_flows_is_not() {
    // Ten parts 200 ms apart: 2 s in all, four times the timeout, but never a pause as long.
    let flowing = upstream_trickling_its_answer(Duration::from_millis(200)).await;
    let mut settings = config(&[flowing], DEAD_BROKER, "unused");
    settings.upstream_timeout_ms = 500;
    let gateway = TestGateway::spawn(settings).await;
    let response = gateway.get("/api/movies").await;
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.bytes().await.expect("the whole answer");
    assert_eq!(body.len(), 100);
    gateway.stop().await;

    // Parts 5 s apart: cut off once the first pause passes the timeout.
    let stalling = upstream_trickling_its_answer(Duration::from_secs(5)).await;
    let mut settings = config(&[stalling], DEAD_BROKER, "unused");
    settings.upstream_timeout_ms = 500;
    let gateway = TestGateway::spawn(settings).await;
    let started = Instant::now();
    let response = gateway.get("/api/movies").await;
    assert_eq!(response.status(), StatusCode::OK, "the head came in time");
    assert!(
        response.bytes().await.is_err(),
        "an answer cut off is not a complete body"
    );
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(450) && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );
    gateway.stop().await;
}

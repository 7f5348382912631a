//! `LOG_FORMAT=json`: the real gateway binary writes one JSON object per line, a request's lines
//! carrying its request id and route template (in `span`), its answer's status and latency; `LOG_FORMAT` of another value is
//! refused at start with a message naming it.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use end_to_end::{free_port, service_binaries};
use serde_json::Value;

fn gateway(log_format: &str, port: u16) -> Result<Command> {
    let mut command = Command::new(service_binaries()?.join("gateway"));
    command
        .env_clear()
        .env("LOG_FORMAT", log_format)
        .env("RUST_LOG", "info")
        .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("INVENTORY_URL", "http://127.0.0.1:9")
        .env("AMQP_URL", "amqp://guest:guest@127.0.0.1:9/%2f")
        .env("SHUTDOWN_DRAIN_MS", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    Ok(command)
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_with_request_id_route_status_and_latency() -> Result<()>
{
    let port = free_port()?;
    let mut child = gateway("json", port)?
        .spawn()
        .context("starting the gateway")?;
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/api/movies/7");
    let mut answer = None;
    for _ in 0..100 {
        if let Ok(response) = client
            .get(&url)
            .header("x-request-id", "log-format-test")
            .send()
            .await
        {
            answer = Some(response.status());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(
        answer == Some(reqwest::StatusCode::BAD_GATEWAY),
        "inventory is absent: {answer:?}"
    );
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    let status = child.wait()?;
    ensure!(status.success(), "the gateway exited with {status}");

    let stdout = BufReader::new(child.stdout.take().context("stdout")?);
    let mut lines = 0;
    let mut response_line = None;
    for line in stdout.lines() {
        let line = line?;
        let object: Value = serde_json::from_str(&line)
            .with_context(|| format!("a line that is not JSON: {line}"))?;
        ensure!(object.is_object(), "not an object: {line}");
        lines += 1;
        // The event's own fields at the top; its request's span (id, method, path, route) under
        // `span`.
        if object["span"]["request_id"] == "log-format-test" && object.get("status").is_some() {
            response_line = Some(object);
        }
    }
    ensure!(lines >= 2, "{lines} lines");
    let response = response_line.context("no line of the request's answer")?;
    ensure!(response["status"] == 502, "{response}");
    ensure!(
        response["span"]["route"] == "/api/movies/{*rest}",
        "{response}"
    );
    ensure!(response["latency"].is_string(), "{response}");
    Ok(())
}

#[test]
fn another_log_format_is_refused_at_start_naming_it() -> Result<()> {
    let mut child = gateway("xml", free_port()?)?.spawn()?;
    let status = child.wait()?;
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .context("stderr")?
        .read_to_string(&mut stderr)?;
    ensure!(status.code() == Some(1), "{status}");
    ensure!(
        stderr.contains("LOG_FORMAT must be `text` or `json`, not `xml`"),
        "{stderr}"
    );
    Ok(())
}

//! `LOG_FORMAT=json`: the real gateway binary writes one JSON object per line, a request's lines
//! carrying its request id and route template (in `span`), its answer's status and latency, and
//! for a confirmed order the message id it became; `LOG_FORMAT` of another value is refused at
//! start with a message naming it.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use end_to_end::{amqp_url, free_port, service_binaries, Scratch};
use serde_json::{json, Value};

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
    let child = gateway("json", port)?
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
    let lines = stop_and_read_lines(child)?;
    ensure!(lines.len() >= 2, "{} lines", lines.len());
    let response = answer_line(&lines, "log-format-test")?;
    ensure!(response["status"] == 502, "{response}");
    ensure!(
        response["span"]["route"] == "/api/movies/{*rest}",
        "{response}"
    );
    ensure!(response["latency"].is_string(), "{response}");
    Ok(())
}

/// Stops the gateway with SIGTERM and returns its stdout, each line parsed as a JSON object.
fn stop_and_read_lines(mut child: std::process::Child) -> Result<Vec<Value>> {
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    let status = child.wait()?;
    ensure!(status.success(), "the gateway exited with {status}");
    let stdout = BufReader::new(child.stdout.take().context("stdout")?);
    let mut objects = Vec::new();
    for line in stdout.lines() {
        let line = line?;
        let object: Value = serde_json::from_str(&line)
            .with_context(|| format!("a line that is not JSON: {line}"))?;
        ensure!(object.is_object(), "not an object: {line}");
        objects.push(object);
    }
    Ok(objects)
}

/// The line of the answer to the request `request_id` (the last of those with a status: an error
/// line comes before it): the event's own fields at the top, the request's span (id, method,
/// path, route) under `span`.
fn answer_line(lines: &[Value], request_id: &str) -> Result<Value> {
    lines
        .iter()
        .rev()
        .find(|object| object["span"]["request_id"] == request_id && object.get("status").is_some())
        .cloned()
        .context("no line of the request's answer")
}

#[tokio::test]
async fn a_confirmed_orders_answer_line_names_its_message_id() -> Result<()> {
    let scratch = Scratch::create("log_format").await?;
    let outcome = order_line(&scratch).await;
    scratch.drop_all().await?;
    outcome
}

async fn order_line(scratch: &Scratch) -> Result<()> {
    let port = free_port()?;
    let child = gateway("json", port)?
        .env("AMQP_URL", amqp_url())
        .env("BILLING_QUEUE", scratch.queue())
        .spawn()
        .context("starting the gateway")?;
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/api/billing");
    let order = json!({"user_id": "log-format", "number_of_items": 1, "total_amount": "9.99"});
    let mut accepted = None;
    // The gateway answers 503 until its broker connection is up.
    for _ in 0..100 {
        if let Ok(response) = client
            .post(&url)
            .header("x-request-id", "log-format-order")
            .json(&order)
            .send()
            .await
        {
            if response.status() == reqwest::StatusCode::ACCEPTED {
                accepted = Some(response.json::<Value>().await?);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lines = stop_and_read_lines(child)?;
    let accepted = accepted.context("the order was never accepted")?;
    let answer = answer_line(&lines, "log-format-order")?;
    ensure!(answer["status"] == 202, "{answer}");
    ensure!(
        answer["span"]["message_id"] == accepted["id"],
        "{answer} against {accepted}"
    );
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

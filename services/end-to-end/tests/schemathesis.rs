//! schemathesis over `openapi.yaml`, with all its checks, against the three real binaries on
//! loopback: every answer must match the spec, every request the spec allows must be accepted and
//! every one it forbids refused, no 5xx. Bounded in examples (a fixed seed, so a failure is
//! reproduced by running the same command) and in time.
//!
//! Needs `schemathesis` on the PATH (scripts/prerequisites installs it from PyPI), `DATABASE_URL`
//! and `AMQP_URL` as the README's test command sets them. Fails, never skips, when it is missing.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use end_to_end::{with_platform, Platform, Scratch};

/// Examples per operation and phase; with 9 operations, about a thousand requests.
const MAX_EXAMPLES: &str = "100";
const SEED: &str = "20261202";

#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_nothing_against_openapi_yaml() -> Result<()> {
    with_platform("schemathesis", Duration::from_secs(10), run).await
}

async fn run(_scratch: Scratch, platform: Platform, _client: reqwest::Client) -> Result<()> {
    let spec = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../openapi.yaml");
    let started = Instant::now();
    let output = Command::new("schemathesis")
        .arg("run")
        .arg(&spec)
        .args(["--url", &platform.gateway_url])
        .args(["--checks", "all"])
        .args(["--max-examples", MAX_EXAMPLES, "--seed", SEED])
        .args(["--request-timeout", "10", "--max-failures", "20"])
        .env("NO_COLOR", "1")
        // Its cache of past failures goes there, not into the source tree.
        .current_dir(std::env::temp_dir())
        .output()
        .context("cannot run schemathesis (scripts/prerequisites installs it)")?;
    let report = String::from_utf8_lossy(&output.stdout);
    let cases = report
        .lines()
        .skip_while(|line| !line.starts_with("Test cases:"))
        .nth(1)
        .unwrap_or("(no count)")
        .trim();
    println!("schemathesis: {cases} in {:?}", started.elapsed());
    if !output.status.success() {
        bail!(
            "schemathesis found failures (reproduce: schemathesis run openapi.yaml --url URL \
             --checks all --max-examples {MAX_EXAMPLES} --seed {SEED}):\n{report}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

//! A restart that refuses no connection: the real gateway binary, given its listening socket the
//! way systemd gives a socket-activated unit its socket (`LISTEN_FDS`), serves on it; while it is
//! stopped and before the next process starts, a new connection waits in the socket's accept
//! queue, and the next process answers it. Without a passed socket (below: `LISTEN_ADDR` only),
//! the same gap refuses connections.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use end_to_end::{service_binaries, Service};

/// `GET /health` on a new connection; the whole answer.
fn get_health(stream: &mut TcpStream) -> Result<String> {
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    stream.write_all(b"GET /health HTTP/1.1\r\nhost: gateway\r\nconnection: close\r\n\r\n")?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .context("reading the answer")?;
    Ok(answer)
}

fn gateway_env(listen: &str) -> Vec<(&'static str, String)> {
    vec![
        ("LISTEN_ADDR", listen.to_owned()),
        // Neither is needed for /health: nothing listens there.
        ("INVENTORY_URL", "http://127.0.0.1:9".to_owned()),
        ("AMQP_URL", "amqp://guest:guest@127.0.0.1:9/%2f".to_owned()),
        ("BILLING_QUEUE", "socket_activation_unused".to_owned()),
        // The broker warnings (nothing listens there) are noise here.
        ("RUST_LOG", "error".to_owned()),
    ]
}

#[test]
fn a_restart_with_a_passed_socket_queues_new_connections_instead_of_refusing_them() -> Result<()> {
    let bin_dir = service_binaries()?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let address = listener.local_addr()?.to_string();
    let env = gateway_env(&address);

    let first = Service::start_with_listener(&bin_dir, "gateway", &env, &listener)?;
    let answer = get_health(&mut TcpStream::connect(&address)?)?;
    ensure!(
        answer.starts_with("HTTP/1.1 200"),
        "first process: {answer}"
    );
    first.stop()?;

    // No gateway runs now: the connection is accepted by the kernel and waits.
    let mut waiting = TcpStream::connect(&address).context("connecting between two processes")?;
    waiting.write_all(b"GET /health HTTP/1.1\r\nhost: gateway\r\nconnection: close\r\n\r\n")?;
    let second = Service::start_with_listener(&bin_dir, "gateway", &env, &listener)?;
    let mut answer = String::new();
    waiting.set_read_timeout(Some(Duration::from_secs(20)))?;
    waiting.read_to_string(&mut answer)?;
    ensure!(
        answer.starts_with("HTTP/1.1 200"),
        "the waiting connection: {answer}"
    );
    second.stop()?;

    // The same gap without a passed socket: refused.
    drop(listener);
    let own = Service::start(&bin_dir, "gateway", &gateway_env(&address))?;
    let mut served = None;
    for _ in 0..100 {
        if let Ok(mut stream) = TcpStream::connect(&address) {
            served = Some(get_health(&mut stream)?);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let served = served.context("the gateway never listened on LISTEN_ADDR")?;
    ensure!(served.starts_with("HTTP/1.1 200"), "{served}");
    own.stop()?;
    ensure!(
        TcpStream::connect(&address).is_err(),
        "with no passed socket, a stopped gateway's port refuses connections"
    );
    Ok(())
}

//! `provision status`: one round trip per host, and the real script run on this machine against
//! a health endpoint served here and the local RabbitMQ.

use std::io::{Read, Write};
use std::net::TcpListener;

use provisioner::converge::status::{self, QueueStatus, ServiceStatus};
use provisioner::converge::transport::fake::FakeTransport;
use provisioner::desired::ServiceSpec;

use crate::facts::{desired, LocalShell};

const QUEUE: &str = "billing_queue";

fn host_with_services(health_port: u16) -> provisioner::desired::DesiredHost {
    let mut host = desired("postgres", "unused");
    host.services = vec![
        ServiceSpec {
            unit: "inventory".into(),
            health_url: format!("http://127.0.0.1:{health_port}/health"),
            ready_url: format!("http://127.0.0.1:{health_port}/ready"),
            socket: None,
            tls: None,
        },
        ServiceSpec {
            unit: "billing".into(),
            // Nothing listens on port 1.
            health_url: "http://127.0.0.1:1/health".into(),
            ready_url: "http://127.0.0.1:1/ready".into(),
            socket: None,
            tls: None,
        },
    ];
    host
}

#[test]
fn status_is_one_round_trip_per_host_and_parses_services_and_queue() {
    let host = host_with_services(8080);
    let fake = FakeTransport::new("localhost");
    fake.answer(
        "sh -s",
        0,
        "@@service 0\nactive\nhealthy {\"status\":\"ok\",\"service\":\"inventory\",\"version\":\"0.3.1\"}\nready\n\
         @@service 1\ninactive\nunhealthy\nunready\n\
         @@queues\nother\t9\t9\nbilling_queue\t4\t1\n@@end\n",
    );
    let status = status::gather(&fake, &host, QUEUE).expect("status");
    assert_eq!(fake.calls().len(), 1, "{}", fake.transcript());
    assert!(fake.calls()[0].sudo);
    assert_eq!(
        status.services,
        [
            ServiceStatus {
                name: "inventory".into(),
                active: true,
                healthy: true,
                ready: true,
                version: Some("0.3.1".into()),
            },
            ServiceStatus {
                name: "billing".into(),
                active: false,
                healthy: false,
                ready: false,
                version: None,
            },
        ]
    );
    assert_eq!(
        status.queue,
        Some(QueueStatus {
            name: QUEUE.into(),
            messages: 4,
            consumers: 1
        })
    );

    let failing = FakeTransport::new("localhost");
    failing.answer(
        "sh -s",
        0,
        "@@service 0\nactive\nunhealthy\n@@service 1\nactive\nunhealthy\n@@queues\n@@queueerror Error: unable to perform an operation on node\n@@end\n",
    );
    let error = status::gather(&failing, &host, QUEUE).expect_err("broker down");
    assert_eq!(
        error.to_string(),
        "localhost: rabbitmqctl list_queues fails: Error: unable to perform an operation on node"
    );
}

#[test]
fn the_status_script_runs_here_against_a_real_health_endpoint_and_rabbitmq() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    let server = std::thread::spawn(move || {
        // Two requests: the script asks the health URL, then the readiness URL, once each.
        for _ in 0..2 {
            let (mut stream, _) = listener.accept().expect("accept");
            let mut request = [0_u8; 1024];
            let _ = stream.read(&mut request);
            let body = r#"{"status":"ok","service":"inventory","version":"9.8.7"}"#;
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    let host = host_with_services(port);
    // A queue nobody declared on this machine's broker: nothing waits, nobody consumes.
    let queue = format!("provision_status_{}", std::process::id());
    let status = status::gather(&LocalShell, &host, &queue).expect("status");
    server.join().expect("server");
    let inventory = &status.services[0];
    assert!(inventory.healthy && inventory.ready, "{status:?}");
    assert_eq!(inventory.version.as_deref(), Some("9.8.7"));
    assert!(
        !status.services[1].healthy && !status.services[1].ready,
        "{status:?}"
    );
    assert_eq!(
        status.queue,
        Some(QueueStatus {
            name: queue,
            messages: 0,
            consumers: 0
        })
    );
}

//! The services' own AMQP connection (`service_common::amqp`) as the gateway publishes on it,
//! against the real broker: confirms on several channels, bodies split over frames, returns,
//! refused logins, heartbeats both ways and a broker that goes silent, closing, and TLS verified
//! against a CA file alone.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use lapin::options::BasicGetOptions;
use lapin::BasicProperties;
use service_common::amqp::{Confirmation, Connection, Error, Options};
use service_common::{AmqpUrl, AmqpUrls};
use tokio::net::TcpListener;

use crate::helpers::*;

/// `AMQP_URL` with `query` added.
fn amqp_url_with(query: &str) -> AmqpUrl {
    let url = amqp_url();
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}{query}").parse().unwrap()
}

fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

/// Every message of `queue`, taken off it: (message id, delivery mode, body), in queue order.
async fn take_all(broker: &Broker, queue: &str) -> Vec<(String, Option<u8>, Vec<u8>)> {
    let mut messages = Vec::new();
    while let Some(message) = broker
        .channel
        .basic_get(queue, BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        let delivery = message.delivery;
        let id = delivery
            .properties
            .message_id()
            .as_ref()
            .unwrap()
            .to_string();
        messages.push((id, *delivery.properties.delivery_mode(), delivery.data));
    }
    messages
}

#[tokio::test]
async fn publishes_on_every_channel_are_confirmed_and_arrive_whole_and_in_order() {
    const MESSAGES: usize = 300;
    const CHANNELS: u16 = 3;
    let queue = unique_queue();
    let broker = Broker::connect().await;
    assert_eq!(broker.message_count(&queue).await, 0);
    // The smallest frame AMQP allows, so that the large bodies go out in several frames.
    let url = amqp_url_with("frame_max=4096");
    let connection = Connection::open(&url, Options::publishing("test", CHANNELS, &queue))
        .await
        .unwrap();

    let payload = |i: usize| -> Vec<u8> {
        if i % 50 == 7 {
            (0..10_000 + i).map(|b| (b % 251) as u8).collect()
        } else {
            format!("{{\"n\":{i}}}").into_bytes()
        }
    };
    let connection = &connection;
    let confirms = join_all((0..MESSAGES).map(|i| async move {
        let id = format!("message-{i}");
        connection
            .publish(i % usize::from(CHANNELS), id, persistent(), payload(i))
            .await
    }))
    .await;
    for (i, confirm) in confirms.into_iter().enumerate() {
        assert_eq!(confirm.unwrap(), Confirmation::Ack, "message {i}");
    }

    let messages = take_all(&broker, &queue).await;
    assert_eq!(messages.len(), MESSAGES);
    let mut last_of_channel = HashMap::new();
    for (id, delivery_mode, body) in messages {
        let i: usize = id.strip_prefix("message-").unwrap().parse().unwrap();
        assert_eq!(body, payload(i), "the body of {id}");
        assert_eq!(delivery_mode, Some(2), "{id} is persistent");
        // The messages of one channel reach the queue in the order they were published.
        let channel = i % usize::from(CHANNELS);
        if let Some(before) = last_of_channel.insert(channel, i) {
            assert!(before < i, "{before} then {i} on channel {channel}");
        }
    }

    connection.close("test done", Duration::from_secs(5)).await;
    assert!(!connection.is_connected());
    let late = connection
        .publish(0, "late", persistent(), b"{}".to_vec())
        .await;
    assert!(matches!(late, Err(Error::Closed)), "{late:?}");
    assert_eq!(broker.message_count(&queue).await, 0, "nothing after close");
    broker.delete_queue(&queue).await;
    broker.close().await;
}

#[tokio::test]
async fn a_message_no_queue_takes_is_returned_and_the_channel_goes_on() {
    let queue = unique_queue();
    let broker = Broker::connect().await;
    let missing = Connection::open(
        &amqp_url_with("heartbeat=5"),
        Options::publishing("test", 1, &queue),
    )
    .await
    .unwrap();
    // Nothing declared `queue`: the default exchange routes the message nowhere.
    let returned = missing
        .publish(0, "lost", persistent(), b"{}".to_vec())
        .await
        .unwrap();
    assert_eq!(
        returned,
        Confirmation::Returned {
            code: 312,
            text: "NO_ROUTE".into()
        }
    );
    assert_eq!(broker.message_count(&queue).await, 0);
    // Declared now: the same channel publishes on, confirmed.
    let routed = missing
        .publish(0, "found", persistent(), b"{}".to_vec())
        .await
        .unwrap();
    assert_eq!(routed, Confirmation::Ack);
    assert_eq!(broker.message_count(&queue).await, 1);
    missing.close("test done", Duration::from_secs(5)).await;
    broker.delete_queue(&queue).await;
    broker.close().await;
}

#[tokio::test]
async fn a_refused_login_or_vhost_says_why() {
    let mut wrong = reqwest::Url::parse(&amqp_url()).unwrap();
    wrong.set_password(Some("not-the-password")).unwrap();
    let refused = Connection::open(
        &wrong.as_str().parse().unwrap(),
        Options::publishing("test", 1, "q"),
    )
    .await
    .unwrap_err();
    match &refused {
        Error::ClosedByBroker { code: 403, text } => {
            assert!(text.contains("ACCESS_REFUSED"), "{text}");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        !refused.to_string().contains("not-the-password"),
        "{refused}"
    );

    let mut vhost = reqwest::Url::parse(&amqp_url()).unwrap();
    vhost.set_path("/no-such-vhost");
    let refused = Connection::open(
        &vhost.as_str().parse().unwrap(),
        Options::publishing("test", 1, "q"),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(refused, Error::ClosedByBroker { code: 530, .. }),
        "{refused:?}"
    );
}

#[tokio::test]
async fn heartbeats_keep_an_idle_connection_and_a_silent_broker_is_given_up() {
    let queue = unique_queue();
    let broker = Broker::connect().await;
    assert_eq!(broker.message_count(&queue).await, 0);
    let relay = FreezableRelay::start().await;
    let url: AmqpUrl = relay.url().parse().unwrap();
    let connection = Connection::open(&url, Options::publishing("test", 1, &queue))
        .await
        .unwrap();

    // Idle for several 1 s heartbeat intervals: the broker closes a client that sends nothing
    // for two, and the client gives up a broker that does.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    assert!(connection.is_connected(), "{:?}", connection.failure());
    let confirm = connection
        .publish(0, "after-idle", persistent(), b"{}".to_vec())
        .await;
    assert_eq!(confirm.unwrap(), Confirmation::Ack);

    relay.freeze();
    let frozen_at = Instant::now();
    let pending = tokio::time::timeout(
        Duration::from_secs(10),
        connection.publish(0, "never-confirmed", persistent(), b"{}".to_vec()),
    )
    .await
    .expect("a silent broker is given up within two heartbeat intervals, not never");
    assert!(
        matches!(pending, Err(Error::MissedHeartbeats(_))),
        "{pending:?}"
    );
    assert!(
        frozen_at.elapsed() < Duration::from_secs(5),
        "{:?}",
        frozen_at.elapsed()
    );
    tokio::time::timeout(Duration::from_secs(1), connection.failed())
        .await
        .expect("failed() returns once the connection has failed");
    assert!(!connection.is_connected());
    broker.delete_queue(&queue).await;
    broker.close().await;
}

#[tokio::test]
async fn amqps_verifies_the_broker_against_the_ca_file_alone() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let ca = |name: &str| {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        let file = write(&format!("{name}.crt"), cert.pem());
        (key, cert, file)
    };
    let (ca_key, ca_cert, ca_file) = ca("ca");
    let (_, _, other_ca_file) = ca("other-ca");
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server_cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&server_key, &ca_cert, &ca_key)
        .unwrap();
    let cert_file = write("server.crt", server_cert.pem());
    let key_file = write("server.key", server_key.serialize_pem());

    // TLS on a loopback port, relayed in clear to the broker.
    let acceptor = tokio_rustls::TlsAcceptor::from(
        service_common::tls::server_config(&cert_file, &key_file, None).unwrap(),
    );
    let upstream = broker_address();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let (acceptor, upstream) = (acceptor.clone(), upstream.clone());
            tokio::spawn(async move {
                let Ok(mut client) = acceptor.accept(client).await else {
                    return;
                };
                let mut broker = tokio::net::TcpStream::connect(&upstream).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut broker).await;
            });
        }
    });
    let mut amqps = reqwest::Url::parse(&amqp_url()).unwrap();
    amqps.set_scheme("amqps").unwrap();
    amqps.set_host(Some("127.0.0.1")).unwrap();
    amqps.set_port(Some(port)).unwrap();
    let urls = |ca: &std::path::Path| -> AmqpUrl {
        let urls: AmqpUrls = amqps.as_str().parse().unwrap();
        urls.with_ca_file(Some(ca)).unwrap().node(0).clone()
    };

    let queue = unique_queue();
    let broker = Broker::connect().await;
    assert_eq!(broker.message_count(&queue).await, 0);
    let connection = Connection::open(&urls(&ca_file), Options::publishing("test", 1, &queue))
        .await
        .unwrap();
    let confirm = connection
        .publish(0, "over-tls", persistent(), b"{}".to_vec())
        .await;
    assert_eq!(confirm.unwrap(), Confirmation::Ack);
    assert_eq!(broker.message_count(&queue).await, 1);
    connection.close("test done", Duration::from_secs(5)).await;

    let refused = Connection::open(
        &urls(&other_ca_file),
        Options::publishing("test", 1, &queue),
    )
    .await
    .unwrap_err();
    assert!(matches!(refused, Error::Tls(_)), "{refused:?}");
    broker.delete_queue(&queue).await;
    broker.close().await;
}

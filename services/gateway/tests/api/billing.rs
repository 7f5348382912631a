//! `POST /api/billing` against the real RabbitMQ: a confirmed order is in the queue, persistent,
//! with the id the client was given; a refused order publishes nothing; no broker, no 2xx.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use lapin::options::BasicGetOptions;
use reqwest::StatusCode;
use serde_json::{json, Value};
use service_common::BillingOrder;

use crate::helpers::{
    amqp_url, config, dead_upstream, unique_queue, Broker, CuttableRelay, FreezableRelay,
    TestGateway, DEAD_BROKER,
};

async fn gateway_on_queue(queue: &str) -> TestGateway {
    let gateway = TestGateway::spawn(config(&[dead_upstream().await], &amqp_url(), queue)).await;
    gateway.wait_ready().await;
    gateway
}

async fn post_order(gateway: &TestGateway, order: &Value) -> reqwest::Response {
    gateway
        .client
        .post(gateway.url("/api/billing"))
        .json(order)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn confirmed_order_is_in_the_queue_persistent_with_the_returned_id() {
    let queue = unique_queue();
    let broker = Broker::connect().await;
    let gateway = gateway_on_queue(&queue).await;

    // The audit's shape: every value a string.
    let response = post_order(
        &gateway,
        &json!({"user_id": "20", "number_of_items": "99", "total_amount": "250"}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["message"], "order accepted");
    let id = body["id"].as_str().unwrap().to_owned();
    // Time-ordered (v7), so that billing's unique index grows at one end.
    assert_eq!(uuid::Uuid::parse_str(&id).unwrap().get_version_num(), 7);

    let message = broker
        .channel
        .basic_get(&queue, BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("the confirmed order is in the queue");
    let properties = &message.delivery.properties;
    assert_eq!(
        properties.message_id().as_ref().map(|s| s.as_str()),
        Some(id.as_str())
    );
    assert_eq!(*properties.delivery_mode(), Some(2), "persistent");
    assert_eq!(
        properties.content_type().as_ref().map(|s| s.as_str()),
        Some("application/json")
    );
    let order = BillingOrder::from_json_slice(&message.delivery.data).unwrap();
    assert_eq!(order.user_id, "20");
    assert_eq!(order.number_of_items, 99);
    assert_eq!(order.total_amount.to_string(), "250");

    gateway.stop().await;
    broker.delete_queue(&queue).await;
    broker.close().await;
}

#[tokio::test]
async fn refused_orders_are_422_400_or_415_and_publish_nothing() {
    let queue = unique_queue();
    let broker = Broker::connect().await;
    let gateway = gateway_on_queue(&queue).await;

    for (order, field) in [
        (json!({"number_of_items": 1, "total_amount": 1}), "user_id"),
        (
            json!({"user_id": "u", "number_of_items": 0, "total_amount": 1}),
            "number_of_items",
        ),
        (
            json!({"user_id": "u", "number_of_items": 1, "total_amount": "-3"}),
            "total_amount",
        ),
        (
            json!({"user_id": "u", "number_of_items": 1, "total_amount": 1.234}),
            "total_amount",
        ),
    ] {
        let response = post_order(&gateway, &order).await;
        assert_eq!(
            response.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{order}"
        );
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "validation_failed");
        assert!(body["message"].as_str().unwrap().contains(field), "{body}");
    }

    let response = gateway
        .client
        .post(gateway.url("/api/billing"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "invalid_json");

    let response = gateway
        .client
        .post(gateway.url("/api/billing"))
        .header("content-type", "text/plain")
        .body(r#"{"user_id": "u", "number_of_items": 1, "total_amount": 1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "unsupported_media_type");

    assert_eq!(
        broker.message_count(&queue).await,
        0,
        "nothing was published"
    );
    gateway.stop().await;
    broker.delete_queue(&queue).await;
    broker.close().await;
}

#[tokio::test]
async fn broker_down_is_a_quick_json_503_never_a_2xx() {
    let gateway = TestGateway::spawn(config(&[dead_upstream().await], DEAD_BROKER, "unused")).await;
    let started = Instant::now();
    let response = post_order(
        &gateway,
        &json!({"user_id": "u", "number_of_items": 1, "total_amount": 1}),
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "broker_unavailable");
    // The gateway keeps serving everything else.
    let response = gateway.get("/health").await;
    assert_eq!(response.status(), StatusCode::OK);
    gateway.stop().await;
}

#[tokio::test]
async fn an_unroutable_order_is_503_not_202() {
    let queue = unique_queue();
    let broker = Broker::connect().await;
    let gateway = gateway_on_queue(&queue).await;
    // The queue disappears behind the gateway's back: the broker would drop the message, and
    // only the mandatory flag tells the gateway so.
    broker.delete_queue(&queue).await;

    let response = post_order(
        &gateway,
        &json!({"user_id": "u", "number_of_items": 1, "total_amount": 1}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "broker_unavailable");
    gateway.stop().await;
    broker.close().await;
}

#[tokio::test]
async fn many_concurrent_orders_are_all_confirmed_on_one_connection() {
    const ORDERS: usize = 200;
    let queue = unique_queue();
    let broker = Broker::connect().await;
    let gateway = gateway_on_queue(&queue).await;

    let started = Instant::now();
    let orders: Vec<Value> = (0..ORDERS)
        .map(|i| json!({"user_id": format!("user-{i}"), "number_of_items": i + 1, "total_amount": "9.99"}))
        .collect();
    let responses = join_all(orders.iter().map(|order| post_order(&gateway, order))).await;
    let mut ids = HashSet::new();
    for response in responses {
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let body: Value = response.json().await.unwrap();
        ids.insert(body["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), ORDERS, "every order has its own id");
    // A bound, not a benchmark: a stuck confirm would show as a hang here.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(broker.message_count(&queue).await, ORDERS as u32);

    gateway.stop().await;
    broker.delete_queue(&queue).await;
    broker.close().await;
}

#[tokio::test]
async fn the_publisher_reconnects_after_losing_the_broker() {
    let queue = unique_queue();
    let broker = Broker::connect().await;
    let relay = CuttableRelay::start().await;
    let gateway =
        TestGateway::spawn(config(&[dead_upstream().await], &relay.amqp_url, &queue)).await;
    gateway.wait_ready().await;
    let order = json!({"user_id": "u", "number_of_items": 1, "total_amount": 1});
    assert_eq!(
        post_order(&gateway, &order).await.status(),
        StatusCode::ACCEPTED
    );
    // Each connection attempt that succeeds opens two: one that declares the queues and is
    // closed, then the publishing one.
    assert_eq!(
        relay.accepted(),
        2,
        "one long-lived connection, not one per request"
    );

    relay.cut();
    // During the outage an order is refused quickly or, once reconnected, accepted; never a hang
    // and never a 202 for a message the broker did not confirm.
    let started = Instant::now();
    let status = post_order(&gateway, &order).await.status();
    assert!(
        status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::ACCEPTED,
        "{status}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    let accepted_during_outage = u32::from(status == StatusCode::ACCEPTED);

    // The supervisor notices and reconnects by itself.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let status = post_order(&gateway, &order).await.status();
        if status == StatusCode::ACCEPTED {
            break;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(Instant::now() < deadline, "no reconnection within 15 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        broker.message_count(&queue).await,
        2 + accepted_during_outage
    );
    assert_eq!(relay.accepted(), 4, "exactly one reconnection");

    gateway.stop().await;
    broker.delete_queue(&queue).await;
    broker.close().await;
}

async fn post_with_key(gateway: &TestGateway, key: &str, order: &Value) -> reqwest::Response {
    gateway
        .client
        .post(gateway.url("/api/billing"))
        .header("Idempotency-Key", key)
        .json(order)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_retry_with_the_same_idempotency_key_carries_the_same_message_id() {
    let queue = unique_queue();
    let broker = Broker::connect().await;
    let gateway = gateway_on_queue(&queue).await;
    let order = json!({"user_id": "u", "number_of_items": 1, "total_amount": 1});
    let key = format!("order-{}", uuid::Uuid::new_v4());

    let mut ids = Vec::new();
    for _ in 0..2 {
        let response = post_with_key(&gateway, &key, &order).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let body: Value = response.json().await.unwrap();
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids[0], ids[1], "one key, one order id");
    let other = post_with_key(&gateway, &format!("{key}-2"), &order).await;
    let other: Value = other.json().await.unwrap();
    assert_ne!(other["id"].as_str().unwrap(), ids[0]);

    // Both copies travel with the same message id, which billing stores once.
    for _ in 0..2 {
        let message = broker
            .channel
            .basic_get(&queue, BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .expect("a copy in the queue");
        assert_eq!(
            message
                .delivery
                .properties
                .message_id()
                .as_ref()
                .map(|s| s.as_str()),
            Some(ids[0].as_str())
        );
    }
    broker.delete_queue(&queue).await;
    broker.close().await;
    gateway.stop().await;
}

#[tokio::test]
async fn a_bad_idempotency_key_is_400_and_publishes_nothing() {
    let queue = unique_queue();
    let broker = Broker::connect().await;
    let gateway = gateway_on_queue(&queue).await;
    let order = json!({"user_id": "u", "number_of_items": 1, "total_amount": 1});
    for key in ["", "has space", &"k".repeat(256), "caf\u{e9}"] {
        let response = gateway
            .client
            .post(gateway.url("/api/billing"))
            .header(
                "Idempotency-Key",
                reqwest::header::HeaderValue::from_bytes(key.as_bytes()).unwrap(),
            )
            .json(&order)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{key:?}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "invalid_idempotency_key");
    }
    let twice = gateway
        .client
        .post(gateway.url("/api/billing"))
        .header("Idempotency-Key", "a")
        .header("Idempotency-Key", "b")
        .json(&order)
        .send()
        .await
        .unwrap();
    assert_eq!(twice.status(), StatusCode::BAD_REQUEST);
    assert_eq!(broker.message_count(&queue).await, 0);
    broker.delete_queue(&queue).await;
    broker.close().await;
    gateway.stop().await;
}

#[tokio::test]
async fn orders_sent_as_the_gateway_starts_wait_for_the_broker_instead_of_503() {
    let queue = unique_queue();
    let broker = Broker::connect().await;
    // No wait_ready: the orders race the first connection to the broker.
    let gateway = TestGateway::spawn(config(&[dead_upstream().await], &amqp_url(), &queue)).await;
    let order = json!({"user_id": "u", "number_of_items": 1, "total_amount": 1});
    let statuses = join_all((0..20).map(|_| post_order(&gateway, &order)))
        .await
        .into_iter()
        .map(|response| response.status())
        .collect::<Vec<_>>();
    assert!(
        statuses.iter().all(|s| *s == StatusCode::ACCEPTED),
        "{statuses:?}"
    );
    assert_eq!(broker.message_count(&queue).await, 20);
    broker.delete_queue(&queue).await;
    broker.close().await;
    gateway.stop().await;
}

#[tokio::test]
async fn after_a_long_broker_outage_the_publisher_keeps_retrying_about_every_second() {
    let queue = unique_queue();
    let broker = Broker::connect().await;
    let relay = CuttableRelay::start().await;
    let gateway =
        TestGateway::spawn(config(&[dead_upstream().await], &relay.amqp_url, &queue)).await;
    gateway.wait_ready().await;

    let accepted_before = relay.accepted();
    relay.set_down(true);
    tokio::time::sleep(Duration::from_secs(9)).await;
    let relayed_while_down = relay.accepted() - accepted_before;
    // Each attempt opens two connections side by side: one declares the queues, one publishes
    // (an attempt under way as the relay went down may have had one of them relayed).
    let attempts_while_down = relay.refused().div_ceil(2);
    relay.set_down(false);
    let back = Instant::now();
    let order = json!({"user_id": "u", "number_of_items": 1, "total_amount": 1});
    loop {
        let status = post_order(&gateway, &order).await.status();
        if status == StatusCode::ACCEPTED {
            break;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            back.elapsed() < Duration::from_secs(5),
            "still 503 after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let recovered = back.elapsed();
    println!(
        "{attempts_while_down} attempts in the 9 s down; accepted again {recovered:?} after the \
         broker came back"
    );
    assert_eq!(broker.message_count(&queue).await, 1);
    assert_eq!(relayed_while_down, 0);
    // The backoff is capped, neither growing to minutes nor a busy loop: the delays are 100 ms
    // doubling to 500 ms, plus up to as much jitter (service_common::retry), so 9 s down hold
    // about 10 (every delay at its longest) to 20 attempts; the bounds leave a margin. An
    // uncapped backoff would make about 6. Counted, not timed, so that a loaded machine does not
    // decide; the time to recover is bounded only loosely.
    assert!(
        (8..=24).contains(&attempts_while_down),
        "{attempts_while_down} attempts while down"
    );
    assert!(recovered < Duration::from_secs(4), "{recovered:?}");
    broker.delete_queue(&queue).await;
    broker.close().await;
    gateway.stop().await;
}

#[tokio::test]
async fn with_several_broker_nodes_an_unreachable_one_is_passed_over() {
    let queue = unique_queue();
    let broker = Broker::connect().await;
    // A cluster's URLs with its first node down: the gateway publishes through the next one.
    let nodes = format!("{DEAD_BROKER},{}", amqp_url());
    let gateway = TestGateway::spawn(config(&[dead_upstream().await], &nodes, &queue)).await;
    gateway.wait_ready().await;
    let response = post_order(
        &gateway,
        &json!({"user_id": "u", "number_of_items": 1, "total_amount": "2.50"}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(broker.message_count(&queue).await, 1);
    gateway.stop().await;
    broker.delete_queue(&queue).await;
    broker.close().await;
}

#[tokio::test]
async fn a_first_node_that_answers_nothing_holds_a_starting_gateway_back_a_second_not_five() {
    let queue = unique_queue();
    let broker = Broker::connect().await;
    // The first node takes connections and answers nothing, as a hung node does; waiting out the
    // whole connect timeout (5 s) for it would leave the gateway unready that long.
    let silent = FreezableRelay::start().await;
    silent.freeze();
    let nodes = format!("{},{}", silent.url(), amqp_url());
    let started = Instant::now();
    let gateway = TestGateway::spawn(config(&[dead_upstream().await], &nodes, &queue)).await;
    gateway.wait_ready().await;
    let ready_after = started.elapsed();
    assert!(
        ready_after < Duration::from_secs(3),
        "ready after {ready_after:?}"
    );
    assert_eq!(silent.accepted(), 2, "the silent node was tried first");
    let order = json!({"user_id": "u", "number_of_items": 1, "total_amount": 1});
    assert_eq!(
        post_order(&gateway, &order).await.status(),
        StatusCode::ACCEPTED
    );
    assert_eq!(broker.message_count(&queue).await, 1);
    gateway.stop().await;
    broker.delete_queue(&queue).await;
    broker.close().await;
}

#[tokio::test]
async fn a_node_that_goes_silent_is_left_for_the_next_which_is_kept() {
    let queue = unique_queue();
    let broker = Broker::connect().await;
    // Two nodes: the first goes silent as a machine that lost its power (no reset, no close),
    // the second is the broker behind a relay that counts the gateway's connections.
    let silent = FreezableRelay::start().await;
    let next = CuttableRelay::start().await;
    let mut config = config(
        &[dead_upstream().await],
        &format!("{},{}", silent.url(), next.amqp_url),
        &queue,
    );
    config.publish_timeout_ms = 1_000;
    let gateway = TestGateway::spawn(config).await;
    gateway.wait_ready().await;
    let order = json!({"user_id": "u", "number_of_items": 1, "total_amount": 1});
    assert_eq!(
        post_order(&gateway, &order).await.status(),
        StatusCode::ACCEPTED
    );
    assert_eq!(next.accepted(), 0, "published through the first node");

    // Orders keep coming, one every 100 ms, while the first node is silent: those in flight on
    // it time out (some while the gateway is already leaving it), then the next node takes them.
    silent.freeze();
    let started = Instant::now();
    let mut orders = Vec::new();
    while started.elapsed() < Duration::from_secs(8) {
        let post = gateway
            .client
            .post(gateway.url("/api/billing"))
            .json(&order)
            .send();
        orders.push(tokio::spawn(async move { post.await.unwrap().status() }));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let statuses: Vec<StatusCode> = join_all(orders)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let accepted = statuses
        .iter()
        .filter(|status| **status == StatusCode::ACCEPTED)
        .count();
    for status in &statuses {
        assert!(
            *status == StatusCode::ACCEPTED || *status == StatusCode::SERVICE_UNAVAILABLE,
            "{status}"
        );
    }
    // The last second's orders all went through the next node.
    let last_second = &statuses[statuses.len() - 10..];
    assert!(
        last_second.iter().all(|s| *s == StatusCode::ACCEPTED),
        "{statuses:?}"
    );
    // Once there, the gateway stayed: one connection to declare, one to publish. Confirms that
    // were late on the silent node, timing out after the switch, must not make it leave.
    assert_eq!(next.accepted(), 2, "{statuses:?}");
    assert_eq!(silent.accepted(), 2, "never back to the silent node");
    assert_eq!(broker.message_count(&queue).await, 1 + accepted as u32);
    gateway.stop().await;
    broker.delete_queue(&queue).await;
    broker.close().await;
}

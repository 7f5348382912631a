//! From classic to quorum queues: a deployment from before quorum queues has `billing_queue` and
//! its dead-letter queue as classic queues. The first new billing (or gateway) to declare them
//! moves their messages into quorum queues; nothing is lost, not even what is published while
//! it happens, and a classic queue an old billing still consumes is left until it stops.

use std::time::Duration;

use lapin::{
    options::{BasicConsumeOptions, BasicPublishOptions, BasicQosOptions},
    publisher_confirm::Confirmation,
    types::FieldTable,
    BasicProperties, Connection, ConnectionProperties,
};
use service_common::queue::migrate::{staging_queue_name, LOCK_QUEUE};
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::*;

/// After a migration: both queues are quorum queues, and nothing of the move is left.
async fn assert_migrated(broker: &Broker) {
    let dead_letters = broker.dead_letter_queue();
    for queue in [&broker.queue, &dead_letters] {
        assert!(broker.is_quorum(queue).await, "{queue} is a quorum queue");
        let staging = staging_queue_name(queue);
        assert!(!broker.exists(&staging).await, "{staging} is gone");
    }
    assert!(!broker.exists(LOCK_QUEUE).await, "the lock is released");
}

#[sqlx::test(migrator = "billing::MIGRATOR")]
async fn classic_queues_become_quorum_queues_with_every_message(pool: PgPool) {
    let broker = Broker::classic().await;
    let orders: Vec<Uuid> = (0..300).map(|_| Uuid::new_v4()).collect();
    let messages: Vec<(String, Option<Uuid>)> = orders
        .iter()
        .map(|id| (order_json("before_quorum", 1, "4.50"), Some(*id)))
        .collect();
    broker.publish_many(&messages).await;
    // Two dead letters an operator has not looked at yet: they must survive the move too.
    let poison = [Uuid::new_v4(), Uuid::new_v4()];
    let dead_letters = broker.dead_letter_queue();
    for id in poison {
        let confirm = broker
            .channel
            .basic_publish(
                "",
                &dead_letters,
                BasicPublishOptions::default(),
                b"not json",
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_message_id(id.to_string().into()),
            )
            .await
            .expect("publish a dead letter");
        assert!(matches!(
            confirm.await.expect("confirm"),
            Confirmation::Ack(None)
        ));
    }

    let worker = spawn_worker(pool.clone(), amqp_url(), broker.settings());
    eventually("300 rows", || async { count(&pool).await == 300 }).await;
    eventually("the worker is ready", || async {
        worker.readiness.is_consuming()
    })
    .await;
    worker.stop().await;

    for id in &orders {
        assert!(stored(&pool, *id).await, "order {id} is stored");
    }
    assert_migrated(&broker).await;
    assert_eq!(broker.ready(&dead_letters).await, 2);
    let mut kept = Vec::new();
    while let Some(message) = broker.get(&dead_letters).await {
        assert_eq!(message.delivery.data, b"not json");
        let id = message
            .delivery
            .properties
            .message_id()
            .clone()
            .expect("id");
        kept.push(id.to_string());
    }
    kept.sort();
    let mut expected: Vec<String> = poison.iter().map(Uuid::to_string).collect();
    expected.sort();
    assert_eq!(kept, expected, "the dead letters kept their message ids");
    broker.cleanup().await;
}

#[sqlx::test(migrator = "billing::MIGRATOR")]
async fn a_classic_queue_an_old_billing_consumes_is_moved_once_it_stops(pool: PgPool) {
    let broker = Broker::classic().await;
    let orders: Vec<(String, Option<Uuid>)> = (0..50)
        .map(|_| (order_json("old_consumer", 2, "1.00"), Some(Uuid::new_v4())))
        .collect();
    broker.publish_many(&orders).await;
    // The billing from before: it holds 10 deliveries it has not acked (as if mid-batch).
    let old = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("connect");
    let old_channel = old.create_channel().await.expect("channel");
    old_channel
        .basic_qos(10, BasicQosOptions::default())
        .await
        .expect("qos");
    let _held = old_channel
        .basic_consume(
            &broker.queue,
            "old-billing",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");

    let worker = spawn_worker(pool.clone(), amqp_url(), broker.settings());
    // Deleting the queue now would drop the old billing's 10 deliveries: the new one waits.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !worker.readiness.is_consuming(),
        "not ready while the move waits"
    );
    assert!(!broker.is_quorum(&broker.queue).await, "still classic");
    assert_eq!(count(&pool).await, 0);

    // The old billing stops without acking: its deliveries go back to the classic queue.
    old.close(200, "old billing stopped").await.expect("close");
    eventually("50 rows", || async { count(&pool).await == 50 }).await;
    worker.stop().await;
    assert_migrated(&broker).await;
    broker.cleanup().await;
}

#[sqlx::test(migrator = "billing::MIGRATOR")]
async fn orders_published_while_two_workers_migrate_are_stored_or_refused(pool: PgPool) {
    let broker = Broker::classic().await;
    let backlog: Vec<(String, Option<Uuid>)> = (0..1000)
        .map(|_| (order_json("backlog", 1, "2.00"), Some(Uuid::new_v4())))
        .collect();
    broker.publish_many(&backlog).await;

    // A gateway from before the change keeps publishing, `mandatory` as it does: while the
    // queue is gone between its two lives a message comes back (the gateway's 503), otherwise
    // it is confirmed (the gateway's 202) and must become a row.
    let publisher = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("connect");
    let queue = broker.queue.clone();
    let publishing = tokio::spawn(async move {
        let channel = publisher.create_channel().await.expect("channel");
        channel
            .confirm_select(Default::default())
            .await
            .expect("confirms");
        let (mut accepted, mut refused) = (Vec::new(), 0);
        for _ in 0..1000 {
            let id = Uuid::new_v4();
            let confirm = channel
                .basic_publish(
                    "",
                    &queue,
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    order_json("during", 1, "1.00").as_bytes(),
                    BasicProperties::default()
                        .with_delivery_mode(2)
                        .with_message_id(id.to_string().into()),
                )
                .await
                .expect("publish");
            match confirm.await.expect("confirm") {
                Confirmation::Ack(None) => accepted.push(id),
                _ => refused += 1,
            }
        }
        let _ = publisher.close(200, "done").await;
        (accepted, refused)
    });
    // Two new billings start at once: one migrates, the other waits for the lock.
    let first = spawn_worker(pool.clone(), amqp_url(), broker.settings());
    let second = spawn_worker(pool.clone(), amqp_url(), broker.settings());
    let (accepted, refused) = publishing.await.expect("publisher");
    let expected = 1000 + accepted.len() as i64;
    eventually("a row per confirmed order", || async {
        count(&pool).await == expected
    })
    .await;
    first.stop().await;
    second.stop().await;
    println!(
        "published during the move: {} confirmed, {refused} returned; rows: {}",
        accepted.len(),
        count(&pool).await
    );
    for id in accepted
        .iter()
        .chain(backlog.iter().filter_map(|(_, id)| id.as_ref()))
    {
        assert!(stored(&pool, *id).await, "confirmed order {id} is stored");
    }
    assert_eq!(accepted.len() + refused, 1000);
    assert_migrated(&broker).await;
    broker.cleanup().await;
}

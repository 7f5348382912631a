//! Messages in, rows out: exact amounts, dead letters for what cannot be stored, one row per
//! message id, a backlog drained.

use std::{str::FromStr, time::Duration};

use billing::{orders, ConsumerSettings};
use lapin::{
    options::{BasicPublishOptions, QueueDeleteOptions},
    publisher_confirm::Confirmation,
    types::AMQPValue,
    BasicProperties,
};
use rust_decimal::Decimal;
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::*;

#[sqlx::test(migrator = "billing::MIGRATOR")]
async fn valid_messages_become_rows_with_exact_amounts(pool: PgPool) {
    let broker = Broker::new().await;
    let worker = spawn_worker(pool.clone(), amqp_url(), broker.settings());
    let numbers = Uuid::new_v4();
    let strings = Uuid::new_v4();
    broker
        .publish(&order_json("usr_123", 3, "99.97"), Some(numbers))
        .await;
    broker
        .publish(
            r#"{"user_id": "20", "number_of_items": "99", "total_amount": "250"}"#,
            Some(strings),
        )
        .await;
    // A message without a message id could not be deduplicated: it is dead-lettered, twice if
    // delivered twice, and never stored.
    broker.publish(&order_json("no_id", 1, "0.10"), None).await;
    broker.publish(&order_json("no_id", 1, "0.10"), None).await;

    eventually("two rows exist", || async { count(&pool).await == 2 }).await;
    let dlq = broker.dead_letter_queue();
    eventually("both copies are dead letters", || async {
        broker.ready(&dlq).await == 2
    })
    .await;
    worker.stop().await;

    let row = orders::find_by_message_id(&pool, numbers)
        .await
        .expect("query")
        .expect("row");
    assert_eq!((row.user_id.as_str(), row.number_of_items), ("usr_123", 3));
    assert_eq!(
        row.total_amount,
        Decimal::from_str("99.97").expect("decimal")
    );
    let row = orders::find_by_message_id(&pool, strings)
        .await
        .expect("query")
        .expect("row");
    assert_eq!((row.user_id.as_str(), row.number_of_items), ("20", 99));
    // NUMERIC(14, 2) as PostgreSQL itself prints it: no float ever touched the amounts.
    let amounts: Vec<String> =
        sqlx::query_scalar("SELECT total_amount::text FROM orders ORDER BY id")
            .fetch_all(&pool)
            .await
            .expect("amounts");
    assert_eq!(amounts, ["99.97", "250.00"]);
    let without_id: i64 =
        sqlx::query_scalar("SELECT count(*) FROM orders WHERE message_id IS NULL")
            .fetch_one(&pool)
            .await
            .expect("count");
    assert_eq!(without_id, 0);
    assert_eq!(
        broker.ready(&broker.queue.clone()).await,
        0,
        "every message was acked"
    );
    broker.cleanup().await;
}

#[sqlx::test(migrator = "billing::MIGRATOR")]
async fn invalid_messages_are_dead_lettered_and_do_not_block_the_next(pool: PgPool) {
    let broker = Broker::new().await;
    let bad_items = Uuid::new_v4();
    let not_json = Uuid::new_v4();
    let good = Uuid::new_v4();
    let bad_body = order_json("u", 0, "5");
    // Published before the worker starts so all three land in the same batch.
    broker.publish(&bad_body, Some(bad_items)).await;
    broker.publish("this is not json", Some(not_json)).await;
    broker.publish(&order_json("u", 2, "5"), Some(good)).await;

    let worker = spawn_worker(pool.clone(), amqp_url(), broker.settings());
    eventually("the valid message is stored", || stored(&pool, good)).await;
    // A valid message published after the poison ones is still processed too.
    let later = Uuid::new_v4();
    broker.publish("[]", None).await;
    broker.publish(&order_json("u", 1, "1"), Some(later)).await;
    eventually("the later message is stored", || stored(&pool, later)).await;
    worker.stop().await;

    assert_eq!(count(&pool).await, 2);
    assert_eq!(
        broker.ready(&broker.queue.clone()).await,
        0,
        "poison messages were not requeued"
    );
    let dlq = broker.dead_letter_queue();
    assert_eq!(broker.ready(&dlq).await, 3);

    let first = broker.get(&dlq).await.expect("first dead letter");
    assert_eq!(first.delivery.data, bad_body.as_bytes(), "body kept as is");
    let props = &first.delivery.properties;
    assert_eq!(
        props.message_id().as_ref().map(|id| id.to_string()),
        Some(bad_items.to_string())
    );
    assert_eq!(
        props.delivery_mode(),
        &Some(2),
        "dead letters are persistent"
    );
    let reason = death_reason(&first);
    assert!(reason.contains("number_of_items"), "{reason}");

    let second = broker.get(&dlq).await.expect("second dead letter");
    assert_eq!(second.delivery.data, b"this is not json");
    broker.cleanup().await;
}

#[sqlx::test(migrator = "billing::MIGRATOR")]
async fn a_row_the_database_rejects_is_dead_lettered_without_blocking_its_batch(pool: PgPool) {
    // Validation matches the schema, so stand in for "PostgreSQL refuses this row" with an extra
    // constraint: retrying such a batch forever would block every message behind it.
    sqlx::query("ALTER TABLE orders ADD CONSTRAINT no_mallory CHECK (user_id <> 'mallory')")
        .execute(&pool)
        .await
        .expect("add constraint");
    let broker = Broker::new().await;
    let (before, rejected, after) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    broker
        .publish(&order_json("alice", 1, "1"), Some(before))
        .await;
    broker
        .publish(&order_json("mallory", 1, "1"), Some(rejected))
        .await;
    broker
        .publish(&order_json("bob", 1, "1"), Some(after))
        .await;

    let worker = spawn_worker(pool.clone(), amqp_url(), broker.settings());
    eventually("both acceptable rows are stored", || async {
        stored(&pool, before).await && stored(&pool, after).await
    })
    .await;
    eventually("the rejected one is dead-lettered", || async {
        broker.ready(&broker.dead_letter_queue()).await == 1
    })
    .await;
    worker.stop().await;

    assert_eq!(count(&pool).await, 2);
    assert_eq!(broker.ready(&broker.queue.clone()).await, 0);
    let dead = broker
        .get(&broker.dead_letter_queue())
        .await
        .expect("dead letter");
    let reason = death_reason(&dead);
    assert!(reason.contains("no_mallory"), "{reason}");
    broker.cleanup().await;
}

#[sqlx::test(migrator = "billing::MIGRATOR")]
async fn the_same_message_id_never_makes_a_second_row(pool: PgPool) {
    let broker = Broker::new().await;
    let id = Uuid::new_v4();
    let body = order_json("twice", 1, "12.50");
    // Twice in the same batch…
    broker.publish(&body, Some(id)).await;
    broker.publish(&body, Some(id)).await;
    let worker = spawn_worker(pool.clone(), amqp_url(), broker.settings());
    eventually("the order is stored", || stored(&pool, id)).await;
    // …and once more later, as a broker redelivery would; the sentinel behind it proves the
    // duplicate was consumed, not merely still waiting.
    broker.publish(&body, Some(id)).await;
    let sentinel = Uuid::new_v4();
    broker
        .publish(&order_json("sentinel", 1, "1"), Some(sentinel))
        .await;
    eventually("the sentinel is stored", || stored(&pool, sentinel)).await;
    worker.stop().await;

    assert_eq!(
        count(&pool).await,
        2,
        "one row for the repeated id, one for the sentinel"
    );
    assert_eq!(broker.ready(&broker.queue.clone()).await, 0);
    assert_eq!(
        broker.ready(&broker.dead_letter_queue()).await,
        0,
        "a duplicate is not poison"
    );
    broker.cleanup().await;
}

#[sqlx::test(migrator = "billing::MIGRATOR")]
async fn a_backlog_of_500_messages_is_drained(pool: PgPool) {
    let broker = Broker::new().await;
    let messages: Vec<(String, Option<Uuid>)> = (1..=500)
        .map(|i| {
            (
                order_json(&format!("user{i}"), i, &format!("{i}.25")),
                Some(Uuid::new_v4()),
            )
        })
        .collect();
    broker.publish_many(&messages).await;
    assert_eq!(broker.ready(&broker.queue.clone()).await, 500);

    let worker = spawn_worker(pool.clone(), amqp_url(), broker.settings());
    eventually("all 500 rows exist", || async { count(&pool).await == 500 }).await;
    worker.stop().await;

    assert_eq!(broker.ready(&broker.queue.clone()).await, 0);
    let total: Decimal = sqlx::query_scalar("SELECT sum(total_amount) FROM orders")
        .fetch_one(&pool)
        .await
        .expect("sum");
    // Sum of i + 0.25 for i in 1..=500.
    assert_eq!(total, Decimal::from_str("125375.00").expect("decimal"));
    broker.cleanup().await;
}

#[sqlx::test(migrator = "billing::MIGRATOR")]
async fn batches_stored_at_once_are_each_acked_once_with_their_dead_letters(pool: PgPool) {
    let broker = Broker::new().await;
    // Small batches, four committing at once, so many overlap: one 3 messages long or shorter
    // may commit before an earlier one, and is acked only after it.
    let settings = ConsumerSettings {
        prefetch: 35,
        batch_size: 7,
        batches_in_flight: 4,
        ..broker.settings()
    };
    // 400 messages: every 13th is poison, every 10th a copy of the order before it.
    let mut messages: Vec<(String, Option<Uuid>)> = Vec::new();
    let (mut stored, mut poison) = (0_i64, 0_u32);
    for i in 1..=400 {
        if i % 13 == 0 {
            poison += 1;
            messages.push(("not json".to_owned(), Some(Uuid::new_v4())));
        } else if i % 10 == 0 && messages.last().is_some_and(|(body, _)| body != "not json") {
            let copy = messages.last().cloned().expect("a previous order");
            messages.push(copy);
        } else {
            stored += 1;
            messages.push((
                order_json(&format!("user{i}"), 1, "1.50"),
                Some(Uuid::new_v4()),
            ));
        }
    }
    broker.publish_many(&messages).await;
    let worker = spawn_worker(pool.clone(), amqp_url(), settings);
    eventually("every order stored", || async {
        count(&pool).await == stored
    })
    .await;
    let dead_letters = broker.dead_letter_queue();
    eventually("every poison message dead-lettered", || async {
        broker.ready(&dead_letters).await == poison
    })
    .await;
    worker.stop().await;
    // Stopping closes the channel, which requeues whatever was not acked: nothing was left.
    assert_eq!(broker.ready(&broker.queue.clone()).await, 0);
    assert_eq!(
        count(&pool).await,
        stored,
        "one row per order, copies skipped"
    );
    broker.cleanup().await;
}

#[sqlx::test(migrator = "billing::MIGRATOR")]
async fn a_dead_letter_stays_even_when_the_original_had_an_expiration(pool: PgPool) {
    let broker = Broker::new().await;
    let id = Uuid::new_v4();
    // A poison message that would expire 1.5 s after being queued.
    let confirm = broker
        .channel
        .basic_publish(
            "",
            &broker.queue,
            BasicPublishOptions::default(),
            b"not an order",
            BasicProperties::default()
                .with_delivery_mode(2)
                .with_message_id(id.to_string().into())
                .with_expiration("1500".into()),
        )
        .await
        .expect("publish");
    assert!(matches!(
        confirm.await.expect("confirm"),
        Confirmation::Ack(None)
    ));
    let worker = spawn_worker(pool.clone(), amqp_url(), broker.settings());
    let dlq = broker.dead_letter_queue();
    eventually("the poison message is a dead letter", || async {
        broker.ready(&dlq).await == 1
    })
    .await;
    worker.stop().await;
    // Well past the original expiration, it is still there, with the original expiration noted.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(broker.ready(&dlq).await, 1, "the dead letter expired");
    let dead = broker.get(&dlq).await.expect("dead letter");
    let properties = &dead.delivery.properties;
    assert_eq!(properties.expiration(), &None);
    let headers = properties.headers().clone().unwrap_or_default();
    assert_eq!(
        headers.inner().get("x-original-expiration"),
        Some(&AMQPValue::LongString("1500".into()))
    );
    broker.cleanup().await;
}

#[sqlx::test(migrator = "billing::MIGRATOR")]
async fn several_workers_share_the_queue_and_rows_stay_unique(pool: PgPool) {
    let broker = Broker::new().await;
    // Two billing instances, as on two billing hosts, with a small prefetch so both get work.
    let settings = ConsumerSettings {
        prefetch: 10,
        batch_size: 10,
        ..broker.settings()
    };
    let first = spawn_worker(pool.clone(), amqp_url(), settings.clone());
    let second = spawn_worker(pool.clone(), amqp_url(), settings);
    eventually("both workers consume", || async {
        broker.consumers(&broker.queue).await == 2
    })
    .await;
    // 300 orders, each sent twice (a client's retry with its Idempotency-Key, or a redelivery),
    // the copies far apart so they are likely to reach different workers.
    let ids: Vec<Uuid> = (0..300).map(|_| Uuid::new_v4()).collect();
    let copy = |id: &Uuid| (order_json("shared", 1, "3.00"), Some(*id));
    let messages: Vec<(String, Option<Uuid>)> =
        ids.iter().map(copy).chain(ids.iter().map(copy)).collect();
    broker.publish_many(&messages).await;
    eventually("300 rows", || async { count(&pool).await == 300 }).await;
    eventually("every copy consumed", || async {
        broker.ready(&broker.queue).await == 0
    })
    .await;
    first.stop().await;
    second.stop().await;
    assert_eq!(
        count(&pool).await,
        300,
        "one row per order, whichever worker took its copies"
    );
    assert_eq!(
        broker.ready(&broker.dead_letter_queue()).await,
        0,
        "a duplicate is not poison"
    );
    broker.cleanup().await;
}

/// Bodies larger than a frame (the smallest frame size AMQP allows, 4 KiB) arrive whole: an order
/// is stored, and a poison message is dead-lettered byte for byte.
#[sqlx::test(migrator = "billing::MIGRATOR")]
async fn messages_over_several_frames_are_stored_and_dead_lettered_whole(pool: PgPool) {
    let broker = Broker::new().await;
    let url = amqp_url();
    let separator = if url.contains('?') { '&' } else { '?' };
    let worker = spawn_worker(
        pool.clone(),
        format!("{url}{separator}frame_max=4096"),
        broker.settings(),
    );
    let (order, poison) = (Uuid::new_v4(), Uuid::new_v4());
    let padded = format!("{}{}", order_json("large", 2, "19.99"), " ".repeat(20_000));
    let unreadable = format!("not json {}", "x".repeat(20_000));
    broker
        .publish_many(&[(padded, Some(order)), (unreadable.clone(), Some(poison))])
        .await;

    eventually("the order is stored", || async {
        stored(&pool, order).await
    })
    .await;
    let dlq = broker.dead_letter_queue();
    eventually("the poison message is a dead letter", || async {
        broker.ready(&dlq).await == 1
    })
    .await;
    worker.stop().await;
    let dead = broker.get(&dlq).await.expect("the dead letter");
    assert_eq!(dead.delivery.data, unreadable.as_bytes());
    assert_eq!(
        dead.delivery
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.as_str()),
        Some(poison.to_string().as_str())
    );
    assert_eq!(count(&pool).await, 1);
    assert_eq!(broker.ready(&broker.queue.clone()).await, 0);
    broker.cleanup().await;
}

/// Deleting the queue under the worker cancels its subscription (the broker's basic.cancel): the
/// worker declares the queue again, subscribes again, and stores what arrives then.
#[sqlx::test(migrator = "billing::MIGRATOR")]
async fn a_queue_deleted_under_the_worker_is_declared_and_consumed_again(pool: PgPool) {
    let broker = Broker::new().await;
    let queue = broker.queue.clone();
    let worker = spawn_worker(pool.clone(), amqp_url(), broker.settings());
    eventually("the worker consumes", || async {
        broker.consumers(&queue).await == 1
    })
    .await;
    broker
        .channel
        .queue_delete(&queue, QueueDeleteOptions::default())
        .await
        .expect("delete the queue");
    // `exists` first: a passive declaration of a missing queue would close the broker's channel.
    eventually("the worker subscribed to a new queue", || async {
        broker.exists(&queue).await && broker.consumers(&queue).await == 1
    })
    .await;
    let id = Uuid::new_v4();
    broker
        .publish(&order_json("after", 1, "1.00"), Some(id))
        .await;
    eventually("the order is stored", || async { stored(&pool, id).await }).await;
    assert!(worker.readiness.is_consuming());
    worker.stop().await;
    broker.cleanup().await;
}

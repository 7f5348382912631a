//! PostgreSQL or RabbitMQ going away, and shutdown at the worst moment: nothing is lost, nothing
//! is acked before its row is committed.

use std::time::Duration;

use billing::consumer::ConsumerSettings;
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::*;

#[sqlx::test(migrator = "billing::MIGRATOR")]
async fn a_database_outage_keeps_the_message_until_the_database_returns(pool: PgPool) {
    let broker = Broker::new().await;
    let proxy = Proxy::start(postgres_addr(&pool)).await;
    let worker_pool = pool_through(&pool, &proxy);
    let worker = spawn_worker(worker_pool.clone(), amqp_url(), broker.settings());
    eventually("the worker consumes", || async {
        worker.readiness.is_consuming()
    })
    .await;

    proxy.down();
    let id = Uuid::new_v4();
    broker
        .publish(&order_json("outage", 1, "3.00"), Some(id))
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !stored(&pool, id).await,
        "nothing can be stored while the database is down"
    );
    assert_eq!(
        broker.ready(&broker.queue.clone()).await,
        0,
        "the worker holds it, unacked"
    );

    proxy.restore();
    eventually("the message is stored once the database is back", || {
        stored(&pool, id)
    })
    .await;
    worker.stop().await;
    assert_eq!(count(&pool).await, 1);
    assert_eq!(
        broker.ready(&broker.queue.clone()).await,
        0,
        "acked after the commit"
    );
    worker_pool.close().await;
    broker.cleanup().await;
}

#[sqlx::test(migrator = "billing::MIGRATOR")]
async fn stopping_during_a_database_outage_returns_the_message_to_the_queue(pool: PgPool) {
    let broker = Broker::new().await;
    // Nothing listens on the proxy while it is down: the database is simply unreachable.
    let proxy = Proxy::start(postgres_addr(&pool)).await;
    proxy.down();
    let unreachable = pool_through(&pool, &proxy);
    let worker = spawn_worker(unreachable.clone(), amqp_url(), broker.settings());
    let id = Uuid::new_v4();
    broker.publish(&order_json("kept", 4, "40"), Some(id)).await;
    eventually("the worker took the message", || async {
        broker.ready(&broker.queue.clone()).await == 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    worker.stop().await;

    eventually("the unacked message is back in the queue", || async {
        broker.ready(&broker.queue.clone()).await == 1
    })
    .await;
    assert_eq!(count(&pool).await, 0);

    let worker = spawn_worker(pool.clone(), amqp_url(), broker.settings());
    eventually("it is stored by the next worker", || stored(&pool, id)).await;
    worker.stop().await;
    assert_eq!(broker.ready(&broker.queue.clone()).await, 0);
    unreachable.close().await;
    broker.cleanup().await;
}

#[sqlx::test(migrator = "billing::MIGRATOR")]
async fn the_worker_reconnects_after_losing_rabbitmq(pool: PgPool) {
    let broker = Broker::new().await;
    let proxy = Proxy::start(rabbitmq_addr()).await;
    let through_proxy = amqp_url().replacen(
        &rabbitmq_addr().port().to_string(),
        &proxy.port.to_string(),
        1,
    );
    let worker = spawn_worker(pool.clone(), through_proxy, broker.settings());
    let before = Uuid::new_v4();
    broker
        .publish(&order_json("before", 1, "1"), Some(before))
        .await;
    eventually("stored before the drop", || stored(&pool, before)).await;

    proxy.down();
    eventually("the worker notices the drop", || async {
        !worker.readiness.is_consuming()
    })
    .await;
    let during = Uuid::new_v4();
    broker
        .publish(&order_json("during", 1, "2"), Some(during))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.restore();

    eventually("the worker consumes again", || async {
        worker.readiness.is_consuming()
    })
    .await;
    eventually("stored after reconnecting", || stored(&pool, during)).await;
    worker.stop().await;
    assert_eq!(count(&pool).await, 2);
    broker.cleanup().await;
}

#[sqlx::test(migrator = "billing::MIGRATOR")]
async fn shutdown_mid_stream_commits_and_acks_exactly_what_it_took(pool: PgPool) {
    const TOTAL: i64 = 1000;
    let broker = Broker::new().await;
    let messages: Vec<(String, Option<Uuid>)> = (1..=TOTAL)
        .map(|i| {
            (
                order_json("stream", 1, &i.to_string()),
                Some(Uuid::new_v4()),
            )
        })
        .collect();
    broker.publish_many(&messages).await;

    // Small batches so that the stream is still flowing when shutdown arrives.
    let settings = ConsumerSettings {
        prefetch: 4,
        batch_size: 2,
        ..broker.settings()
    };
    let worker = spawn_worker(pool.clone(), amqp_url(), settings);
    eventually("the worker is mid-stream", || async {
        count(&pool).await >= 50
    })
    .await;
    worker.stop().await;

    let rows = count(&pool).await;
    assert!(
        rows < TOTAL,
        "shutdown arrived after the backlog was drained; test proves nothing"
    );
    // Committed but unacked would be counted twice; acked but uncommitted would be missing.
    eventually(
        "rows and queued messages add up to what was published",
        || async { i64::from(broker.ready(&broker.queue.clone()).await) + rows == TOTAL },
    )
    .await;
    assert_eq!(count(&pool).await, rows, "nothing written after exit");

    let worker = spawn_worker(pool.clone(), amqp_url(), broker.settings());
    eventually("the rest is drained by the next worker", || async {
        count(&pool).await == TOTAL
    })
    .await;
    worker.stop().await;
    assert_eq!(broker.ready(&broker.queue.clone()).await, 0);
    broker.cleanup().await;
}

#[sqlx::test(migrator = "billing::MIGRATOR")]
async fn with_several_broker_nodes_an_unreachable_one_is_passed_over(pool: PgPool) {
    let broker = Broker::new().await;
    // A cluster's URLs with its first node down: the worker consumes through the next one.
    let nodes = format!("amqp://guest:guest@127.0.0.1:1/%2f,{}", amqp_url());
    let worker = spawn_worker(pool.clone(), nodes, broker.settings());
    let id = Uuid::new_v4();
    broker
        .publish(&order_json("two_nodes", 1, "1.00"), Some(id))
        .await;
    eventually("the order is stored", || stored(&pool, id)).await;
    worker.stop().await;
    broker.cleanup().await;
}

#[sqlx::test(migrator = "billing::MIGRATOR")]
async fn a_node_that_takes_the_connection_and_answers_nothing_is_given_up_for_the_next(
    pool: PgPool,
) {
    let broker = Broker::new().await;
    // A first node that accepts connections and never says a word, as a hung node does: without a
    // bound on connecting, the worker would wait on it forever.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = silent.local_addr().expect("address").port();
    let held = tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            sockets.push(socket);
        }
    });
    let nodes = format!("amqp://guest:guest@127.0.0.1:{port}/%2f,{}", amqp_url());
    let worker = spawn_worker(pool.clone(), nodes, broker.settings());
    let id = Uuid::new_v4();
    broker
        .publish(&order_json("after_a_silent_node", 1, "1.00"), Some(id))
        .await;
    eventually("the order is stored", || stored(&pool, id)).await;
    assert!(worker.readiness.is_consuming());
    worker.stop().await;
    held.abort();
    broker.cleanup().await;
}

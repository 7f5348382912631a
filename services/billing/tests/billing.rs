//! Integration tests of the billing worker against the real PostgreSQL and RabbitMQ of the machine:
//! each test gets a fresh migrated database (`#[sqlx::test]`) and its own uniquely named queue.

use std::{
    future::Future,
    net::SocketAddr,
    str::FromStr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use axum::body::Body;
use billing::{
    consumer::{self, ConsumerSettings, Readiness, DEATH_REASON_HEADER},
    orders, Config, SecretUrl,
};
use lapin::{
    message::BasicGetMessage,
    options::{
        BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
        QueueDeleteOptions,
    },
    publisher_confirm::Confirmation,
    types::{AMQPValue, FieldTable},
    BasicProperties, Channel, Connection, ConnectionProperties,
};
use rust_decimal::Decimal;
use service_common::{dead_letter_queue_name, declare_billing_queue, ErrorBody};
use sqlx::{
    postgres::{PgConnectOptions, PgPoolOptions},
    PgPool,
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{oneshot, watch},
    task::JoinHandle,
};
use tower::ServiceExt;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);

fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A uniquely named queue (and its dead-letter queue) plus a publishing connection.
struct Broker {
    connection: Connection,
    channel: Channel,
    queue: String,
}

impl Broker {
    async fn new() -> Self {
        let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .expect("RabbitMQ reachable at AMQP_URL");
        let channel = connection.create_channel().await.expect("channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        let queue = format!("billing_test_{}", Uuid::new_v4());
        let broker = Self {
            connection,
            channel,
            queue,
        };
        // Declared by the very declaration the worker and the gateway make.
        declare_billing_queue(&broker.channel, &broker.queue)
            .await
            .expect("declare queue");
        broker
    }

    fn dead_letter_queue(&self) -> String {
        dead_letter_queue_name(&self.queue)
    }

    fn settings(&self) -> ConsumerSettings {
        ConsumerSettings {
            max_backoff: Duration::from_millis(500),
            ..ConsumerSettings::new(self.queue.clone())
        }
    }

    /// Publishes as the gateway does (persistent, JSON, with a message id) and waits for the confirm.
    async fn publish(&self, body: &str, message_id: Option<Uuid>) {
        self.publish_many(&[(body.to_owned(), message_id)]).await;
    }

    async fn publish_many(&self, messages: &[(String, Option<Uuid>)]) {
        let mut confirms = Vec::new();
        for (body, message_id) in messages {
            let mut properties = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into());
            if let Some(id) = message_id {
                properties = properties.with_message_id(id.to_string().into());
            }
            let confirm = self
                .channel
                .basic_publish(
                    "",
                    &self.queue,
                    BasicPublishOptions::default(),
                    body.as_bytes(),
                    properties,
                )
                .await
                .expect("publish");
            confirms.push(confirm);
        }
        for confirm in confirms {
            assert!(matches!(
                confirm.await.expect("confirm"),
                Confirmation::Ack(None)
            ));
        }
    }

    /// Messages ready (not delivered to a consumer) in `queue`.
    async fn ready(&self, queue: &str) -> u32 {
        self.channel
            .queue_declare(
                queue,
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("passive declare")
            .message_count()
    }

    async fn get(&self, queue: &str) -> Option<BasicGetMessage> {
        self.channel
            .basic_get(queue, BasicGetOptions { no_ack: true })
            .await
            .expect("basic.get")
    }

    async fn cleanup(self) {
        for name in [self.dead_letter_queue(), self.queue.clone()] {
            let _ = self
                .channel
                .queue_delete(&name, QueueDeleteOptions::default())
                .await;
        }
        let _ = self.connection.close(200, "test done").await;
    }
}

/// A consumer running in the background, stopped like SIGTERM stops the binary.
struct RunningWorker {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), billing::Error>>,
    readiness: Readiness,
}

fn spawn_worker(pool: PgPool, amqp_url: String, settings: ConsumerSettings) -> RunningWorker {
    let (stop, stopped) = oneshot::channel::<()>();
    let readiness = Readiness::default();
    let task = tokio::spawn(consumer::run(
        pool,
        amqp_url.parse().expect("AMQP_URL"),
        settings,
        readiness.clone(),
        async {
            let _ = stopped.await;
        },
    ));
    RunningWorker {
        stop,
        task,
        readiness,
    }
}

impl RunningWorker {
    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("worker stops promptly after shutdown")
            .expect("worker task did not panic")
            .expect("worker exits Ok on shutdown");
    }
}

/// Polls `check` until it holds, failing the test after `WAIT`.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn count(pool: &PgPool) -> i64 {
    orders::count(pool).await.expect("count orders")
}

async fn stored(pool: &PgPool, id: Uuid) -> bool {
    orders::find_by_message_id(pool, id)
        .await
        .expect("query")
        .is_some()
}

fn order_json(user: &str, items: u32, amount: &str) -> String {
    format!(r#"{{"user_id": "{user}", "number_of_items": {items}, "total_amount": {amount}}}"#)
}

/// A loopback TCP proxy that can be "unplugged": while down it drops every connection, which is
/// what a restarting PostgreSQL or RabbitMQ looks like to a client.
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    kill: watch::Sender<u64>,
    task: JoinHandle<()>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let up = Arc::new(AtomicBool::new(true));
        let (kill, killed) = watch::channel(0u64);
        let accepting = up.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !accepting.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let mut killed = killed.clone();
                killed.mark_unchanged();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = killed.changed() => {}
                    }
                });
            }
        });
        Self {
            port,
            up,
            kill,
            task,
        }
    }

    fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.kill.send_modify(|generation| *generation += 1);
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.kill.send_modify(|generation| *generation += 1);
    }
}

/// A pool to the same test database, but through `proxy`.
fn pool_through(pool: &PgPool, proxy: &Proxy) -> PgPool {
    let options: PgConnectOptions = (*pool.connect_options()).clone().port(proxy.port);
    PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(2))
        .connect_lazy_with(options)
}

fn postgres_addr(pool: &PgPool) -> SocketAddr {
    let options = pool.connect_options();
    let host = if options.get_host() == "localhost" {
        "127.0.0.1"
    } else {
        options.get_host()
    };
    SocketAddr::from_str(&format!("{host}:{}", options.get_port())).expect("postgres address")
}

fn rabbitmq_addr() -> SocketAddr {
    let url = amqp_url();
    let authority = url.split('@').nth(1).unwrap_or(&url);
    let host_port = authority.split('/').next().unwrap_or("127.0.0.1:5672");
    let host_port = host_port.replace("localhost", "127.0.0.1");
    SocketAddr::from_str(&host_port).expect("AMQP_URL host:port as an IP address")
}

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
async fn health_is_ok_and_ready_is_503_until_consuming(pool: PgPool) {
    let app = billing::health::router(billing::health::HealthState {
        pool,
        readiness: Readiness::default(),
    });
    let response = app
        .clone()
        .oneshot(http_get("/health"))
        .await
        .expect("health");
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = json_body(response).await;
    assert_eq!(body["status"], "ok");
    assert_eq!(body["service"], "billing");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));

    let response = app.oneshot(http_get("/ready")).await.expect("ready");
    assert_eq!(response.status(), 503);
    let body: ErrorBody = json_body(response).await;
    assert_eq!(body.error, "not_ready");
}

#[sqlx::test(migrator = "billing::MIGRATOR")]
async fn run_serves_ready_stores_orders_and_exits_ok_on_shutdown(pool: PgPool) {
    let broker = Broker::new().await;
    // The test database on the server of DATABASE_URL, with its credentials: a server that asks
    // for a password (Debian's default for TCP) must get one.
    let admin = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let (server, _) = admin
        .rsplit_once('/')
        .expect("DATABASE_URL ends with /DATABASE");
    let database_url = format!(
        "{server}/{}",
        pool.connect_options()
            .get_database()
            .expect("test database name")
    );
    // Port 0: the system picks a free port, and the worker serves on this very listener.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("listener");
    let health_addr = listener.local_addr().expect("addr");
    let config = Config {
        database_url: SecretUrl::new(database_url),
        amqp_url: amqp_url().parse().expect("AMQP_URL"),
        billing_queue: broker.queue.clone(),
        health_listen_addr: health_addr,
        prefetch: 100,
        batch_size: 100,
        batch_timeout_ms: 50,
        max_backoff_ms: 500,
        server: http_serve::ServerArgs::default(),
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(billing::run(config, listener, async {
        let _ = stopped.await;
    }));

    let client = reqwest::Client::new();
    let ready_url = format!("http://{health_addr}/ready");
    eventually("/ready answers 200", || async {
        matches!(client.get(&ready_url).send().await, Ok(r) if r.status() == 200)
    })
    .await;
    let id = Uuid::new_v4();
    broker
        .publish(&order_json("via_run", 2, "19.99"), Some(id))
        .await;
    eventually("the order is stored", || stored(&pool, id)).await;

    let _ = stop.send(());
    tokio::time::timeout(WAIT, running)
        .await
        .expect("run returns after shutdown")
        .expect("no panic")
        .expect("run exits Ok");
    assert!(
        client.get(&ready_url).send().await.is_err(),
        "the health listener is closed after shutdown"
    );
    broker.cleanup().await;
}

fn http_get(path: &str) -> axum::http::Request<Body> {
    axum::http::Request::get(path)
        .body(Body::empty())
        .expect("request")
}

async fn json_body<T: serde::de::DeserializeOwned>(response: axum::response::Response) -> T {
    let bytes = axum::body::to_bytes(response.into_body(), 64 * 1024)
        .await
        .expect("body");
    serde_json::from_slice(&bytes).expect("JSON body")
}

/// The `x-death-reason` header of a dead letter.
fn death_reason(message: &BasicGetMessage) -> String {
    match message
        .delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(DEATH_REASON_HEADER))
    {
        Some(AMQPValue::LongString(reason)) => {
            String::from_utf8_lossy(reason.as_bytes()).into_owned()
        }
        other => panic!("missing {DEATH_REASON_HEADER}: {other:?}"),
    }
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

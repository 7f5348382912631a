//! What the billing tests share: a broker with a queue of its own, a worker run like the binary
//! runs it, an unpluggable proxy standing in for an outage, and small waits and builders.

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
    orders,
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
use service_common::{
    dead_letter_queue_name, declare_billing_queue, queue::migrate::quorum_arguments,
};
use sqlx::{
    postgres::{PgConnectOptions, PgPoolOptions},
    PgPool,
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{oneshot, watch},
    task::JoinHandle,
};
use uuid::Uuid;

/// A declaration that only asks about an existing queue.
fn passive() -> QueueDeclareOptions {
    QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    }
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

pub(crate) const WAIT: Duration = Duration::from_secs(30);

pub(crate) fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A uniquely named queue (and its dead-letter queue) plus a publishing connection.
pub(crate) struct Broker {
    pub(crate) connection: Connection,
    pub(crate) channel: Channel,
    pub(crate) queue: String,
}

impl Broker {
    pub(crate) async fn new() -> Self {
        let broker = Self::open().await;
        // Declared by the very declaration the worker and the gateway make.
        declare_billing_queue(&broker.connection, &broker.queue)
            .await
            .expect("declare queue");
        broker
    }

    /// A queue and dead-letter queue as a deployment from before quorum queues has them:
    /// classic, durable, no arguments.
    pub(crate) async fn classic() -> Self {
        let broker = Self::open().await;
        for name in [broker.dead_letter_queue(), broker.queue.clone()] {
            broker
                .channel
                .queue_declare(&name, durable(), FieldTable::default())
                .await
                .expect("declare a classic queue");
        }
        broker
    }

    /// A connection and a confirm-mode channel, and a fresh queue name, declared nowhere yet.
    async fn open() -> Self {
        let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .expect("RabbitMQ reachable at AMQP_URL");
        let channel = connection.create_channel().await.expect("channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        Self {
            connection,
            channel,
            queue: format!("billing_test_{}", Uuid::new_v4()),
        }
    }

    /// Whether `queue` is a quorum queue: RabbitMQ refuses to declare a quorum queue as
    /// classic, and a classic one as quorum. Each try has its own channel, which a refusal closes.
    pub(crate) async fn is_quorum(&self, queue: &str) -> bool {
        let as_quorum = self.connection.create_channel().await.expect("channel");
        let quorum = as_quorum
            .queue_declare(queue, durable(), quorum_arguments())
            .await
            .is_ok();
        let as_classic = self.connection.create_channel().await.expect("channel");
        let classic = as_classic
            .queue_declare(queue, durable(), FieldTable::default())
            .await
            .is_ok();
        assert_ne!(quorum, classic, "`{queue}` is exactly one of the two");
        quorum
    }

    /// Whether a queue of that name exists (a passive declaration, on a channel of its own).
    pub(crate) async fn exists(&self, queue: &str) -> bool {
        let channel = self.connection.create_channel().await.expect("channel");
        channel
            .queue_declare(queue, passive(), FieldTable::default())
            .await
            .is_ok()
    }

    pub(crate) fn dead_letter_queue(&self) -> String {
        dead_letter_queue_name(&self.queue)
    }

    pub(crate) fn settings(&self) -> ConsumerSettings {
        ConsumerSettings {
            max_backoff: Duration::from_millis(500),
            ..ConsumerSettings::new(self.queue.clone())
        }
    }

    /// Publishes as the gateway does (persistent, JSON, with a message id) and waits for the confirm.
    pub(crate) async fn publish(&self, body: &str, message_id: Option<Uuid>) {
        self.publish_many(&[(body.to_owned(), message_id)]).await;
    }

    pub(crate) async fn publish_many(&self, messages: &[(String, Option<Uuid>)]) {
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
    pub(crate) async fn ready(&self, queue: &str) -> u32 {
        self.inspect(queue).await.message_count()
    }

    /// Consumers subscribed to `queue`.
    pub(crate) async fn consumers(&self, queue: &str) -> u32 {
        self.inspect(queue).await.consumer_count()
    }

    async fn inspect(&self, queue: &str) -> lapin::Queue {
        self.channel
            .queue_declare(queue, passive(), FieldTable::default())
            .await
            .expect("passive declare")
    }

    pub(crate) async fn get(&self, queue: &str) -> Option<BasicGetMessage> {
        self.channel
            .basic_get(queue, BasicGetOptions { no_ack: true })
            .await
            .expect("basic.get")
    }

    pub(crate) async fn cleanup(self) {
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
pub(crate) struct RunningWorker {
    pub(crate) stop: oneshot::Sender<()>,
    pub(crate) task: JoinHandle<Result<(), billing::Error>>,
    pub(crate) readiness: Readiness,
}

pub(crate) fn spawn_worker(
    pool: PgPool,
    amqp_url: String,
    settings: ConsumerSettings,
) -> RunningWorker {
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
    pub(crate) async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("worker stops promptly after shutdown")
            .expect("worker task did not panic")
            .expect("worker exits Ok on shutdown");
    }
}

/// Polls `check` until it holds, failing the test after `WAIT`.
pub(crate) async fn eventually<F, Fut>(what: &str, mut check: F)
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

pub(crate) async fn count(pool: &PgPool) -> i64 {
    orders::count(pool).await.expect("count orders")
}

pub(crate) async fn stored(pool: &PgPool, id: Uuid) -> bool {
    orders::find_by_message_id(pool, id)
        .await
        .expect("query")
        .is_some()
}

pub(crate) fn order_json(user: &str, items: u32, amount: &str) -> String {
    format!(r#"{{"user_id": "{user}", "number_of_items": {items}, "total_amount": {amount}}}"#)
}

/// A loopback TCP proxy that can be "unplugged": while down it drops every connection, which is
/// what a restarting PostgreSQL or RabbitMQ looks like to a client.
pub(crate) struct Proxy {
    pub(crate) port: u16,
    pub(crate) up: Arc<AtomicBool>,
    pub(crate) kill: watch::Sender<u64>,
    pub(crate) task: JoinHandle<()>,
}

impl Proxy {
    pub(crate) async fn start(target: SocketAddr) -> Self {
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

    pub(crate) fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.kill.send_modify(|generation| *generation += 1);
    }

    pub(crate) fn restore(&self) {
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
pub(crate) fn pool_through(pool: &PgPool, proxy: &Proxy) -> PgPool {
    let options: PgConnectOptions = (*pool.connect_options()).clone().port(proxy.port);
    PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(2))
        .connect_lazy_with(options)
}

pub(crate) fn postgres_addr(pool: &PgPool) -> SocketAddr {
    let options = pool.connect_options();
    let host = if options.get_host() == "localhost" {
        "127.0.0.1"
    } else {
        options.get_host()
    };
    SocketAddr::from_str(&format!("{host}:{}", options.get_port())).expect("postgres address")
}

pub(crate) fn rabbitmq_addr() -> SocketAddr {
    let url = amqp_url();
    let authority = url.split('@').nth(1).unwrap_or(&url);
    let host_port = authority.split('/').next().unwrap_or("127.0.0.1:5672");
    let host_port = host_port.replace("localhost", "127.0.0.1");
    SocketAddr::from_str(&host_port).expect("AMQP_URL host:port as an IP address")
}

pub(crate) fn http_get(path: &str) -> axum::http::Request<Body> {
    axum::http::Request::get(path)
        .body(Body::empty())
        .expect("request")
}

pub(crate) async fn json_body<T: serde::de::DeserializeOwned>(
    response: axum::response::Response,
) -> T {
    let bytes = axum::body::to_bytes(response.into_body(), 64 * 1024)
        .await
        .expect("body");
    serde_json::from_slice(&bytes).expect("JSON body")
}

/// The `x-death-reason` header of a dead letter.
pub(crate) fn death_reason(message: &BasicGetMessage) -> String {
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

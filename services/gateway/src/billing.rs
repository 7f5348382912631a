//! `POST /api/billing`: validates an order exactly as billing will, publishes it to the durable
//! queue with publisher confirms, and answers 202 only once the broker has confirmed it.
//!
//! One long-lived connection and channel serve every request. A supervisor task owns them:
//! it connects (the gateway starts even when the broker is down), declares the queue, enables
//! confirms, and reconnects with backoff when the connection dies. Requests clone the channel out
//! of a lock and release the lock at once, so many confirms are awaited concurrently.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::publisher_confirm::Confirmation;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde::Serialize;
use service_common::{AmqpUrl, BillingOrder};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::body::read_limited;
use crate::error::{DisplayChain, Error};
use crate::AppState;

/// The routes this module answers.
pub fn router() -> Router<AppState> {
    Router::new().route("/api/billing", post(create_order))
}

/// AMQP delivery mode of messages that survive a broker restart.
const PERSISTENT: u8 = 2;
/// How long one connection attempt (TCP, handshake, declarations) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// First and longest pause between two connection attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How often the supervisor looks at the connection when nothing woke it.
const HEALTH_POLL: Duration = Duration::from_secs(1);

/// The answer to an accepted order.
#[derive(Debug, Serialize)]
pub struct Accepted {
    pub message: &'static str,
    /// The AMQP `message_id` of the published order, which billing stores.
    pub id: Uuid,
}

/// Why an order was not confirmed by the broker. Every variant becomes a 503.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("not connected to the message broker")]
    NotConnected,
    #[error("AMQP error")]
    Amqp(#[from] lapin::Error),
    #[error("the broker refused the message (nack)")]
    Nacked,
    #[error("the broker could not route the message to queue {queue}: {reply_text}")]
    Unroutable { queue: String, reply_text: String },
    #[error("the broker did not confirm the message within {0:?}")]
    Timeout(Duration),
    #[error("publisher confirms are not enabled on the channel")]
    ConfirmsNotEnabled,
}

/// Publishes orders; cheap to clone, shared by every request.
#[derive(Debug, Clone)]
pub struct Publisher {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The confirm-mode channel when connected. Cloned out by each publish; never held across
    /// an await.
    channel: RwLock<Option<Channel>>,
    queue: String,
    confirm_timeout: Duration,
    /// Wakes the supervisor early when a publish failed, so a dead connection is replaced soon.
    check_connection: Notify,
}

/// The supervisor task of a [`Publisher`]; stopping it closes the connection.
#[derive(Debug)]
pub struct PublisherTask {
    stop: watch::Sender<bool>,
    handle: JoinHandle<()>,
}

impl PublisherTask {
    /// Closes the broker connection and waits for the supervisor to end.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        if let Err(err) = self.handle.await {
            tracing::error!(%err, "billing publisher task failed");
        }
    }
}

impl Publisher {
    /// Starts the supervisor, which connects in the background; until it has, publishing fails
    /// with [`PublishError::NotConnected`].
    pub fn start(
        amqp_url: AmqpUrl,
        queue: String,
        confirm_timeout: Duration,
    ) -> (Self, PublisherTask) {
        let inner = Arc::new(Inner {
            channel: RwLock::new(None),
            queue,
            confirm_timeout,
            check_connection: Notify::new(),
        });
        let (stop, stopped) = watch::channel(false);
        let handle = tokio::spawn(supervise(inner.clone(), amqp_url, stopped));
        (Self { inner }, PublisherTask { stop, handle })
    }

    /// Whether a confirm-mode channel is open right now.
    pub fn is_connected(&self) -> bool {
        self.current_channel()
            .is_some_and(|channel| channel.status().connected())
    }

    /// The queue orders go to.
    pub fn queue(&self) -> &str {
        &self.inner.queue
    }

    fn current_channel(&self) -> Option<Channel> {
        self.inner
            .channel
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Publishes `order` and waits for the broker's confirm. Returns the message id only when the
    /// broker has taken responsibility for the message.
    pub async fn publish(&self, order: &BillingOrder) -> Result<Uuid, PublishError> {
        let channel = self.current_channel().ok_or(PublishError::NotConnected)?;
        let id = Uuid::new_v4();
        let properties = BasicProperties::default()
            .with_delivery_mode(PERSISTENT)
            .with_content_type("application/json".into())
            .with_message_id(id.to_string().into());
        let payload = order.to_json_vec();
        let queue = &self.inner.queue;
        let confirmed = tokio::time::timeout(self.inner.confirm_timeout, async {
            channel
                .basic_publish(
                    "",
                    queue,
                    BasicPublishOptions {
                        mandatory: true,
                        immediate: false,
                    },
                    &payload,
                    properties,
                )
                .await?
                .await
        })
        .await;
        let result = match confirmed {
            Err(_) => Err(PublishError::Timeout(self.inner.confirm_timeout)),
            Ok(Err(err)) => Err(PublishError::Amqp(err)),
            // With `mandatory`, a message no queue accepted comes back before its ack.
            Ok(Ok(Confirmation::Ack(Some(returned)))) => Err(PublishError::Unroutable {
                queue: queue.clone(),
                reply_text: returned.reply_text.to_string(),
            }),
            Ok(Ok(Confirmation::Ack(None))) => Ok(id),
            Ok(Ok(Confirmation::Nack(_))) => Err(PublishError::Nacked),
            Ok(Ok(Confirmation::NotRequested)) => Err(PublishError::ConfirmsNotEnabled),
        };
        if matches!(
            result,
            Err(PublishError::Amqp(_) | PublishError::Timeout(_))
        ) {
            self.inner.check_connection.notify_one();
        }
        result
    }
}

/// Opens a connection and a confirm-mode channel, and declares the queue as billing does.
async fn connect(amqp_url: &AmqpUrl, queue: &str) -> Result<(Connection, Channel), lapin::Error> {
    let properties = ConnectionProperties::default().with_connection_name("gateway".into());
    let connection = Connection::connect_uri(amqp_url.to_amqp_uri(), properties).await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    // Durable with no arguments, exactly as billing declares it: any difference would make the
    // second declaration fail with PRECONDITION_FAILED.
    channel
        .queue_declare(
            queue,
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok((connection, channel))
}

/// Keeps one connection open for as long as the gateway runs.
async fn supervise(inner: Arc<Inner>, amqp_url: AmqpUrl, mut stop: watch::Receiver<bool>) {
    let mut backoff = BACKOFF_MIN;
    loop {
        if *stop.borrow() {
            return;
        }
        match tokio::time::timeout(CONNECT_TIMEOUT, connect(&amqp_url, &inner.queue)).await {
            Ok(Ok((connection, channel))) => {
                tracing::info!(broker = %amqp_url, queue = %inner.queue, "connected to the message broker");
                backoff = BACKOFF_MIN;
                let woken = Arc::new(Notify::new());
                let on_error = woken.clone();
                connection.on_error(move |err| {
                    tracing::warn!(error = %DisplayChain(&err), "message broker connection lost");
                    on_error.notify_one();
                });
                *inner.channel.write().unwrap_or_else(|e| e.into_inner()) = Some(channel.clone());

                let stopping = loop {
                    tokio::select! {
                        _ = stop.changed() => break true,
                        () = woken.notified() => {}
                        () = inner.check_connection.notified() => {}
                        () = tokio::time::sleep(HEALTH_POLL) => {}
                    }
                    if !(connection.status().connected() && channel.status().connected()) {
                        break false;
                    }
                };
                *inner.channel.write().unwrap_or_else(|e| e.into_inner()) = None;
                // Closing waits for the confirms still in flight to settle; it is bounded so a
                // dead broker cannot hold the shutdown.
                let _ = tokio::time::timeout(
                    inner.confirm_timeout,
                    connection.close(200, "gateway closing"),
                )
                .await;
                if stopping {
                    tracing::info!("message broker connection closed");
                    return;
                }
                tracing::warn!("message broker connection is gone; reconnecting");
            }
            Ok(Err(err)) => {
                tracing::warn!(broker = %amqp_url, error = %DisplayChain(&err), retry_in_ms = backoff.as_millis() as u64, "cannot connect to the message broker");
            }
            Err(_) => {
                tracing::warn!(broker = %amqp_url, retry_in_ms = backoff.as_millis() as u64, "connecting to the message broker timed out");
            }
        }
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Whether the request says its body is JSON (`application/json` or a `+json` type).
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// `POST /api/billing`.
#[tracing::instrument(skip_all)]
async fn create_order(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Accepted>), Error> {
    if !is_json(&headers) {
        return Err(Error::UnsupportedMediaType);
    }
    let body = read_limited(&headers, body, state.max_body_bytes).await?;
    let order = BillingOrder::from_json_slice(&body)?;
    let id = state.publisher.publish(&order).await?;
    tracing::info!(message_id = %id, "billing order confirmed by the broker");
    Ok((
        StatusCode::ACCEPTED,
        Json(Accepted {
            message: "order accepted",
            id,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn json_content_types() {
        for (value, expected) in [
            ("application/json", true),
            ("Application/JSON; charset=utf-8", true),
            ("application/vnd.order+json", true),
            ("text/plain", false),
            ("application/x-www-form-urlencoded", false),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(value));
            assert_eq!(is_json(&headers), expected, "{value}");
        }
        assert!(!is_json(&HeaderMap::new()));
    }
}

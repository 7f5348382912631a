//! The billing queue: its name, the rules every component checks a configured name against (the
//! gateway, billing and the provisioner), its dead-letter queue, and, with the `amqp` feature, the
//! one declaration of both that every publisher and consumer makes.

/// The queue billing orders travel through when none is configured.
pub const DEFAULT_BILLING_QUEUE: &str = "billing_queue";

/// What the dead-letter queue of a queue appends to its name.
pub const DEAD_LETTER_SUFFIX: &str = ".dead-letter";

/// The longest queue name whose dead-letter queue still fits AMQP's 255-byte limit.
pub const MAX_QUEUE_NAME_BYTES: usize = 255 - DEAD_LETTER_SUFFIX.len();

/// The dead-letter queue of `queue`: where billing puts, with the reason, every message it cannot
/// parse or validate, so that it is neither lost nor retried forever.
pub fn dead_letter_queue_name(queue: &str) -> String {
    format!("{queue}{DEAD_LETTER_SUFFIX}")
}

/// A configured queue name, trimmed, if RabbitMQ will treat it as ours: an empty name would make
/// the broker invent a fresh queue (consuming nothing the gateway sends), `amq.` names are
/// reserved by the broker, and the name and its dead-letter queue's must fit AMQP's limit.
pub fn queue_name(raw: &str) -> Result<String, String> {
    let name = raw.trim();
    if name.is_empty() {
        return Err("the queue name must not be empty".into());
    }
    if name.starts_with("amq.") {
        return Err("names starting with `amq.` are reserved by RabbitMQ".into());
    }
    if name.len() > MAX_QUEUE_NAME_BYTES {
        return Err(format!(
            "the queue name must be at most {MAX_QUEUE_NAME_BYTES} bytes (its dead-letter queue adds `{DEAD_LETTER_SUFFIX}` within AMQP's 255)"
        ));
    }
    Ok(name.to_owned())
}

/// Declares `queue` and its dead-letter queue as durable quorum queues (`x-queue-type=quorum`:
/// replicated by Raft on every node of a RabbitMQ cluster, and the same on a single node), and
/// returns the state of `queue` (its message count). The gateway, billing and the tests all
/// declare them through here: RabbitMQ refuses a second declaration whose arguments differ
/// (`PRECONDITION_FAILED`), so there must be only one way.
///
/// A deployment from before quorum queues has them as classic queues. Whoever declares first
/// moves their messages into quorum queues: see [`migrate`].
#[cfg(feature = "amqp")]
pub async fn declare_billing_queue(
    connection: &lapin::Connection,
    queue: &str,
) -> Result<lapin::Queue, QueueError> {
    migrate::declare_quorum_queue(connection, &dead_letter_queue_name(queue)).await?;
    migrate::declare_quorum_queue(connection, queue).await
}

/// Why the billing queues could not be declared.
#[cfg(feature = "amqp")]
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error(transparent)]
    Amqp(#[from] lapin::Error),
    /// A classic queue of that name still has consumers: billing processes from before quorum
    /// queues, holding deliveries that deleting the queue would lose.
    #[error(
        "`{queue}` is still a classic queue with {consumers} consumer(s) (billing from before quorum queues); it is moved to a quorum queue once they stop"
    )]
    ClassicInUse { queue: String, consumers: u32 },
    /// Another connection is moving the classic queue's messages right now.
    #[error("another connection is moving `{queue}` to a quorum queue")]
    MigrationBusy { queue: String },
    /// The broker did not take a copy: the original stays where it was.
    #[error("moving `{from}` to `{to}`: the broker did not confirm a copy ({reason})")]
    NotMoved {
        from: String,
        to: String,
        reason: String,
    },
}

#[cfg(feature = "amqp")]
pub mod migrate {
    //! From classic to quorum queues without losing a message.
    //!
    //! RabbitMQ cannot change a queue's type, and a classic and a quorum queue cannot share a
    //! name, so the messages go through a staging quorum queue:
    //!
    //! 1. declaring `Q` as a quorum queue fails (`PRECONDITION_FAILED`): `Q` is classic;
    //! 2. if `Q` has consumers (billing from before this change, each holding deliveries that
    //!    deleting `Q` would drop), stop there and let the caller retry later;
    //! 3. take the migration lock (an exclusive queue: one migrator at a time, released if its
    //!    connection dies), move every message of `Q` to the staging queue (each acked only once
    //!    the broker confirmed its copy), then delete `Q` if it is still empty and unused — a
    //!    message published meanwhile makes the delete fail and the move start again;
    //! 4. declare `Q` as a quorum queue and, under the lock again (a quorum queue cannot be
    //!    deleted "if empty", so nobody else may be filling the staging queue), move the staging
    //!    queue's messages into it and delete the staging queue.
    //!
    //! A failure anywhere leaves each message in `Q` or the staging queue (or, if the process
    //! died between a confirmed copy and its ack, in both: the copy keeps its message id, so billing
    //! stores it once). The next declaration, by any process, resumes. A gateway from before the
    //! change that publishes while `Q` does not exist gets its message back (it publishes
    //! `mandatory`) and answers 503, never 202.

    use lapin::{
        options::{
            BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
            QueueDeclareOptions, QueueDeleteOptions,
        },
        protocol::{AMQPErrorKind, AMQPSoftError},
        publisher_confirm::Confirmation,
        types::{AMQPValue, FieldTable},
        Connection,
    };
    use tracing::{info, warn};
    use uuid::Uuid;

    use super::QueueError;

    /// Messages copied before their confirms are awaited and the originals acked at once.
    const MOVE_BATCH: usize = 256;

    /// Rounds of move-then-delete before giving up while publishers keep refilling the queue.
    const ROUNDS: usize = 20;

    /// The exclusive queue whose declaration is the migration lock.
    pub const LOCK_QUEUE: &str = "quorum-migration.lock";

    /// The arguments of every declaration of the billing queues.
    pub fn quorum_arguments() -> FieldTable {
        let mut arguments = FieldTable::default();
        arguments.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        arguments
    }

    /// The staging quorum queue of `queue`: derived from its name (so that any process finds
    /// a migration left half done), and short enough for AMQP's 255 bytes whatever `queue` is.
    pub fn staging_queue_name(queue: &str) -> String {
        let id = Uuid::new_v5(&Uuid::NAMESPACE_OID, queue.as_bytes()).simple();
        format!("quorum-migration.{id}")
    }

    fn durable() -> QueueDeclareOptions {
        QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        }
    }

    fn is_soft(err: &lapin::Error, kind: AMQPSoftError) -> bool {
        matches!(err, lapin::Error::ProtocolError(e) if *e.kind() == AMQPErrorKind::Soft(kind))
    }

    /// Declares `queue` as a durable quorum queue, first moving a classic `queue`'s messages
    /// into one, and finishing a move left half done.
    pub async fn declare_quorum_queue(
        connection: &Connection,
        queue: &str,
    ) -> Result<lapin::Queue, QueueError> {
        let staging = staging_queue_name(queue);
        for _ in 0..ROUNDS {
            // A refused declaration closes its channel: each attempt has its own.
            let channel = connection.create_channel().await?;
            match channel
                .queue_declare(queue, durable(), quorum_arguments())
                .await
            {
                Ok(declared) => {
                    if !exists(connection, &staging).await? {
                        let _ = channel.close(200, "declared").await;
                        return Ok(declared);
                    }
                    locked(
                        connection,
                        queue,
                        drain_staging(connection, &staging, queue),
                    )
                    .await?;
                    // Declared again: the count above misses what came back.
                }
                Err(err) if is_soft(&err, AMQPSoftError::PRECONDITIONFAILED) => {
                    locked(connection, queue, move_classic(connection, queue, &staging)).await?;
                }
                Err(err) => return Err(err.into()),
            }
        }
        Err(QueueError::MigrationBusy {
            queue: queue.to_owned(),
        })
    }

    /// Whether a queue of that name exists.
    async fn exists(connection: &Connection, queue: &str) -> Result<bool, QueueError> {
        let channel = connection.create_channel().await?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        match channel
            .queue_declare(queue, passive, FieldTable::default())
            .await
        {
            Ok(_) => {
                let _ = channel.close(200, "exists").await;
                Ok(true)
            }
            Err(err) if is_soft(&err, AMQPSoftError::NOTFOUND) => Ok(false),
            Err(err) => Err(err.into()),
        }
    }

    /// Runs `step` holding the migration lock: only the holder writes to or deletes a staging
    /// queue (quorum queues cannot be deleted "if empty", so nobody else may be filling it).
    async fn locked(
        connection: &Connection,
        queue: &str,
        step: impl std::future::Future<Output = Result<(), QueueError>>,
    ) -> Result<(), QueueError> {
        let lock = connection.create_channel().await?;
        let exclusive = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..QueueDeclareOptions::default()
        };
        match lock
            .queue_declare(LOCK_QUEUE, exclusive, FieldTable::default())
            .await
        {
            Ok(_) => {}
            Err(err) if is_soft(&err, AMQPSoftError::RESOURCELOCKED) => {
                return Err(QueueError::MigrationBusy {
                    queue: queue.to_owned(),
                })
            }
            Err(err) => return Err(err.into()),
        }
        let done = step.await;
        // The lock's channel did nothing that could close it. Were the connection gone, the
        // broker would have released the lock with it.
        lock.queue_delete(LOCK_QUEUE, QueueDeleteOptions::default())
            .await?;
        let _ = lock.close(200, "unlocked").await;
        done
    }

    /// Steps 2 and 3: `queue` is classic; its messages go to `staging` and it is deleted.
    async fn move_classic(
        connection: &Connection,
        queue: &str,
        staging: &str,
    ) -> Result<(), QueueError> {
        let channel = connection.create_channel().await?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let classic = match channel
            .queue_declare(queue, passive, FieldTable::default())
            .await
        {
            Ok(classic) => classic,
            // Moved by another migrator meanwhile: declare again.
            Err(err) if is_soft(&err, AMQPSoftError::NOTFOUND) => return Ok(()),
            Err(err) => return Err(err.into()),
        };
        if classic.consumer_count() > 0 {
            return Err(QueueError::ClassicInUse {
                queue: queue.to_owned(),
                consumers: classic.consumer_count(),
            });
        }
        channel
            .queue_declare(staging, durable(), quorum_arguments())
            .await?;
        let moved = move_messages(connection, queue, staging).await?;
        info!(%queue, %staging, moved, "moved a classic queue's messages to its staging quorum queue");
        let deleted = channel
            .queue_delete(
                queue,
                QueueDeleteOptions {
                    if_unused: true,
                    if_empty: true,
                    ..QueueDeleteOptions::default()
                },
            )
            .await;
        match deleted {
            Ok(_) => {
                info!(%queue, "deleted the classic queue; it is declared again as a quorum queue");
                let _ = channel.close(200, "moved").await;
                Ok(())
            }
            // Published to (or consumed from) meanwhile: the next round moves again.
            Err(err) if is_soft(&err, AMQPSoftError::PRECONDITIONFAILED) => {
                warn!(%queue, "the classic queue was used while it was moved; moving again");
                Ok(())
            }
            Err(err) => Err(err.into()),
        }
    }

    /// Step 4: what `staging` holds goes to the quorum `queue`, then `staging` is deleted.
    async fn drain_staging(
        connection: &Connection,
        staging: &str,
        queue: &str,
    ) -> Result<(), QueueError> {
        // Drained by the previous holder of the lock.
        if !exists(connection, staging).await? {
            return Ok(());
        }
        let moved = move_messages(connection, staging, queue).await?;
        let channel = connection.create_channel().await?;
        channel
            .queue_delete(staging, QueueDeleteOptions::default())
            .await?;
        let _ = channel.close(200, "moved").await;
        info!(%queue, %staging, moved, "moved the staged messages into the quorum queue");
        Ok(())
    }

    /// Moves every message of `from` to `to`, each acked only once the broker confirmed its
    /// copy (published `mandatory`, so a missing `to` is an error, not a silent drop). Properties
    /// (the message id above all) and body are kept.
    pub async fn move_messages(
        connection: &Connection,
        from: &str,
        to: &str,
    ) -> Result<u64, QueueError> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let mut moved = 0;
        loop {
            let mut confirms = Vec::with_capacity(MOVE_BATCH);
            let mut last = None;
            while confirms.len() < MOVE_BATCH {
                let Some(message) = channel.basic_get(from, BasicGetOptions::default()).await?
                else {
                    break;
                };
                let delivery = message.delivery;
                confirms.push(
                    channel
                        .basic_publish(
                            "",
                            to,
                            BasicPublishOptions {
                                mandatory: true,
                                ..BasicPublishOptions::default()
                            },
                            &delivery.data,
                            delivery.properties.clone(),
                        )
                        .await?,
                );
                last = Some(delivery.delivery_tag);
            }
            let Some(last) = last else { break };
            let count = confirms.len() as u64;
            for confirm in confirms {
                let refused = match confirm.await? {
                    Confirmation::Ack(None) => continue,
                    Confirmation::Ack(Some(returned)) => {
                        format!("returned: {}", returned.reply_text)
                    }
                    Confirmation::Nack(_) => "nacked".to_owned(),
                    Confirmation::NotRequested => "confirms not enabled".to_owned(),
                };
                // Closing the channel requeues every original not acked yet.
                let _ = channel.close(200, "copy refused").await;
                return Err(QueueError::NotMoved {
                    from: from.to_owned(),
                    to: to.to_owned(),
                    reason: refused,
                });
            }
            channel
                .basic_ack(last, BasicAckOptions { multiple: true })
                .await?;
            moved += count;
        }
        let _ = channel.close(200, "moved").await;
        Ok(moved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letter_queue_is_derived_from_the_queue() {
        assert_eq!(
            dead_letter_queue_name("billing_queue"),
            "billing_queue.dead-letter"
        );
    }

    #[test]
    fn names_are_checked_the_same_everywhere() {
        assert_eq!(queue_name("  billing_queue "), Ok("billing_queue".into()));
        for bad in ["", "  ", "amq.gen-x"] {
            assert!(queue_name(bad).is_err(), "{bad:?}");
        }
        let longest = "q".repeat(MAX_QUEUE_NAME_BYTES);
        assert_eq!(dead_letter_queue_name(&longest).len(), 255);
        assert!(queue_name(&longest).is_ok());
        let message = queue_name(&format!("{longest}q")).expect_err("too long");
        assert!(message.contains("243 bytes"), "{message}");
    }
}

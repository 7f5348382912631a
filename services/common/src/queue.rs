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

/// Declares `queue` and its dead-letter queue, durable and with no arguments, and returns the
/// state of `queue` (its message count). The gateway, billing and the tests all declare them
/// through here: RabbitMQ refuses a second declaration whose arguments differ
/// (`PRECONDITION_FAILED`), so there must be only one way.
#[cfg(feature = "amqp")]
pub async fn declare_billing_queue(
    channel: &lapin::Channel,
    queue: &str,
) -> Result<lapin::Queue, lapin::Error> {
    use lapin::options::QueueDeclareOptions;
    use lapin::types::FieldTable;

    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(
            &dead_letter_queue_name(queue),
            durable,
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_declare(queue, durable, FieldTable::default())
        .await
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

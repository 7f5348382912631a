//! The `orders` table: billing is its only writer, and every write is idempotent on `message_id`.

use rust_decimal::Decimal;
use service_common::BillingOrder;
use sqlx::PgPool;
use uuid::Uuid;

/// An order ready to be stored, with the idempotency key it arrived with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    /// The AMQP `message_id` set by the gateway: a redelivery of the same message is recognised
    /// by it. A message without one is never stored (see `consumer::handle`).
    pub message_id: Uuid,
    /// The validated order.
    pub order: BillingOrder,
}

/// A stored row, as tests and operators read it back.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StoredOrder {
    pub id: i64,
    pub message_id: Option<Uuid>,
    pub user_id: String,
    pub number_of_items: i32,
    pub total_amount: Decimal,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// Inserts every order in ONE transaction, skipping those whose `message_id` is already stored
/// (including duplicates inside `orders` itself). Returns how many rows were actually inserted.
/// When this returns `Ok`, the rows are committed and the messages may be acked.
pub async fn insert_batch(pool: &PgPool, orders: &[NewOrder]) -> Result<u64, sqlx::Error> {
    if orders.is_empty() {
        return Ok(0);
    }
    let mut message_ids = Vec::with_capacity(orders.len());
    let mut user_ids = Vec::with_capacity(orders.len());
    let mut items = Vec::with_capacity(orders.len());
    let mut amounts = Vec::with_capacity(orders.len());
    for new in orders {
        message_ids.push(new.message_id);
        user_ids.push(new.order.user_id.clone());
        items.push(new.order.number_of_items);
        amounts.push(new.order.total_amount);
    }

    let mut tx = pool.begin().await?;
    // One statement for the whole batch: a round trip per row is what makes a backlog drain slowly.
    // `WITH ORDINALITY … ORDER BY` keeps the ids in delivery order.
    let inserted = sqlx::query(
        "INSERT INTO orders (message_id, user_id, number_of_items, total_amount) \
         SELECT message_id, user_id, number_of_items, total_amount \
         FROM UNNEST($1::uuid[], $2::varchar[], $3::int4[], $4::numeric[]) \
              WITH ORDINALITY AS t(message_id, user_id, number_of_items, total_amount, n) \
         ORDER BY n \
         ON CONFLICT (message_id) DO NOTHING",
    )
    .bind(&message_ids)
    .bind(&user_ids)
    .bind(&items)
    .bind(&amounts)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(inserted)
}

/// Reads one order back by its message id.
pub async fn find_by_message_id(
    pool: &PgPool,
    message_id: Uuid,
) -> Result<Option<StoredOrder>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, message_id, user_id, number_of_items, total_amount, created_at \
         FROM orders WHERE message_id = $1",
    )
    .bind(message_id)
    .fetch_optional(pool)
    .await
}

/// How many orders are stored.
pub async fn count(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(pool)
        .await
}

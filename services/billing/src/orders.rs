//! The `orders` table: billing is its only writer, and every write is idempotent on `message_id`.

use rust_decimal::Decimal;
use service_common::BillingOrder;
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArgumentBuffer, PgPoolCopyExt};
use sqlx::{Encode, PgPool, Postgres};
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
    // Most batches hold no order stored before: a binary COPY stores them for about a quarter
    // less of PostgreSQL's time than an INSERT (it writes a page's rows at once, and has no
    // arrays to unnest and sort), and an INSERT that looks for a conflict before each row costs a
    // quarter more again. A batch with a stored message id (a redelivery, a client's retry) fails
    // on the unique index as a whole, having stored nothing, and is inserted again skipping them.
    match copy(pool, orders).await {
        Err(sqlx::Error::Database(err)) if err.is_unique_violation() => {
            insert_new(pool, orders).await
        }
        copied => copied,
    }
}

/// The batch's rows in delivery order, so their ids are too.
const COPY_IN: &str = "COPY orders (message_id, user_id, number_of_items, total_amount) \
                       FROM STDIN (FORMAT binary)";

/// Stores `orders` by [`COPY_IN`]: one statement, committed before its answer comes back.
async fn copy(pool: &PgPool, orders: &[NewOrder]) -> Result<u64, sqlx::Error> {
    let data = copy_data(orders).map_err(sqlx::Error::Encode)?;
    let mut copy = pool.copy_in_raw(COPY_IN).await?;
    copy.send(data).await?;
    // A row PostgreSQL refuses comes back here, and the connection is ready for the next batch.
    copy.finish().await
}

/// `orders` in PostgreSQL's binary COPY format, the columns of [`COPY_IN`]: a signature, no
/// flags and no header extension, then each row as its number of fields and each field as its
/// length and its bytes (the amount as sqlx encodes a NUMERIC parameter), and -1 at the end.
/// Fails only on a field longer than 2 GiB or a number of over 32767 digits, which a validated
/// order never holds; should it, the error counts as rejected data (`Error::is_rejected_data`):
/// the batch is stored row by row and that row dead-lettered, not retried as an outage.
fn copy_data(orders: &[NewOrder]) -> Result<Vec<u8>, BoxDynError> {
    const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";
    const FIELDS: i16 = 4;
    fn field(data: &mut Vec<u8>, bytes: &[u8]) -> Result<(), BoxDynError> {
        data.extend_from_slice(&i32::try_from(bytes.len())?.to_be_bytes());
        data.extend_from_slice(bytes);
        Ok(())
    }
    // About 60 bytes a row with a short user id.
    let mut data = Vec::with_capacity(SIGNATURE.len() + 8 + orders.len() * 64 + 2);
    data.extend_from_slice(SIGNATURE);
    data.extend_from_slice(&[0; 8]);
    let mut amount = PgArgumentBuffer::default();
    for new in orders {
        data.extend_from_slice(&FIELDS.to_be_bytes());
        field(&mut data, new.message_id.as_bytes())?;
        field(&mut data, new.order.user_id.as_bytes())?;
        field(&mut data, &new.order.number_of_items.to_be_bytes())?;
        amount.clear();
        // IsNull::No: a Decimal is never NULL.
        let _: IsNull = Encode::<Postgres>::encode_by_ref(&new.order.total_amount, &mut amount)?;
        field(&mut data, &amount)?;
    }
    data.extend_from_slice(&(-1_i16).to_be_bytes());
    Ok(data)
}

/// For a batch holding stored message ids: one statement for the whole batch, skipping them.
/// `WITH ORDINALITY … ORDER BY` keeps the ids in delivery order.
const INSERT_NEW: &str = "INSERT INTO orders (message_id, user_id, number_of_items, total_amount) \
     SELECT message_id, user_id, number_of_items, total_amount \
     FROM UNNEST($1::uuid[], $2::varchar[], $3::int4[], $4::numeric[]) \
          WITH ORDINALITY AS t(message_id, user_id, number_of_items, total_amount, n) \
     ORDER BY n \
     ON CONFLICT (message_id) DO NOTHING";

/// Stores `orders` by [`INSERT_NEW`], column by column: one statement outside an explicit
/// transaction is a transaction of its own, committed before its answer comes back.
async fn insert_new(pool: &PgPool, orders: &[NewOrder]) -> Result<u64, sqlx::Error> {
    let mut message_ids = Vec::with_capacity(orders.len());
    let mut user_ids = Vec::with_capacity(orders.len());
    let mut items = Vec::with_capacity(orders.len());
    let mut amounts = Vec::with_capacity(orders.len());
    for new in orders {
        message_ids.push(new.message_id);
        user_ids.push(new.order.user_id.as_str());
        items.push(new.order.number_of_items);
        amounts.push(new.order.total_amount);
    }
    Ok(sqlx::query(INSERT_NEW)
        .bind(message_ids)
        .bind(user_ids)
        .bind(items)
        .bind(amounts)
        .execute(pool)
        .await?
        .rows_affected())
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

//! The `orders` table's writer on its own: what a batch stores, byte for byte, whichever statement
//! stores it (the binary COPY for a batch of new orders, INSERT … ON CONFLICT for one holding a
//! stored id), and that a batch PostgreSQL refuses stores nothing.

use std::str::FromStr;

use billing::orders::{self, NewOrder};
use rust_decimal::Decimal;
use service_common::BillingOrder;
use sqlx::PgPool;
use uuid::Uuid;

/// User ids COPY's text format would misread unescaped, beside ordinary ones.
const AWKWARD_USER_IDS: [&str; 10] = [
    "usr_1",
    r"back\slash",
    r"\N",
    r"\.",
    "tab\there",
    "line\nbreak",
    "carriage\rreturn",
    "\\\t\n\r\\",
    "quote\"s and 'single' ; DROP TABLE orders; --",
    "ünïcødé 🎬 映画",
];

fn batch(amounts: &[&str]) -> Vec<NewOrder> {
    let max_length = "x".repeat(255);
    AWKWARD_USER_IDS
        .iter()
        .copied()
        .chain([max_length.as_str()])
        .zip(amounts.iter().cycle())
        .enumerate()
        .map(|(i, (user_id, amount))| NewOrder {
            message_id: Uuid::new_v4(),
            order: BillingOrder {
                user_id: user_id.to_owned(),
                number_of_items: i32::try_from(i).expect("small") + 1,
                total_amount: Decimal::from_str(amount).expect("decimal"),
            },
        })
        .collect()
}

/// Every stored row as (message id, user id, items, amount as PostgreSQL prints it), in id order.
async fn rows(pool: &PgPool) -> Vec<(Uuid, String, i32, String)> {
    sqlx::query_as(
        "SELECT message_id, user_id, number_of_items, total_amount::text FROM orders ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .expect("rows")
}

fn expected(batch: &[NewOrder]) -> Vec<(Uuid, String, i32, String)> {
    batch
        .iter()
        .map(|new| {
            (
                new.message_id,
                new.order.user_id.clone(),
                new.order.number_of_items,
                format!("{:.2}", new.order.total_amount),
            )
        })
        .collect()
}

const AMOUNTS: [&str; 4] = ["0", "99999999999.99", "12.5", "0.07"];

#[sqlx::test(migrator = "billing::MIGRATOR")]
async fn a_batch_of_new_orders_is_stored_exactly_and_in_order(pool: PgPool) {
    let new = batch(&AMOUNTS);
    let inserted = orders::insert_batch(&pool, &new).await.expect("stored");
    assert_eq!(inserted, new.len() as u64);
    assert_eq!(rows(&pool).await, expected(&new));
}

#[sqlx::test(migrator = "billing::MIGRATOR")]
async fn a_batch_holding_stored_ids_stores_the_rest_exactly_and_in_order(pool: PgPool) {
    let first = batch(&AMOUNTS);
    orders::insert_batch(&pool, &first[..3])
        .await
        .expect("first");
    // The same three again amid new ones, one of them twice: only the new ones are stored, once.
    let mut second = first.clone();
    second.push(first[5].clone());
    let inserted = orders::insert_batch(&pool, &second).await.expect("second");
    assert_eq!(inserted, first.len() as u64 - 3);
    assert_eq!(rows(&pool).await, expected(&first));
}

#[sqlx::test(migrator = "billing::MIGRATOR")]
async fn a_batch_the_database_refuses_stores_nothing(pool: PgPool) {
    // 10^12 does not fit NUMERIC(14, 2) (`BillingOrder` refuses it before, and this stands in for
    // any row PostgreSQL refuses): the whole batch is refused with it.
    let new = batch(&["1", "1000000000000"]);
    let err = orders::insert_batch(&pool, &new)
        .await
        .expect_err("refused");
    let code = err
        .as_database_error()
        .and_then(|e| e.code())
        .map(|c| c.into_owned());
    assert_eq!(code.as_deref(), Some("22003"), "{err}");
    assert_eq!(rows(&pool).await, []);
    // The connection it failed on is fit for the next batch.
    let next = batch(&["2"]);
    orders::insert_batch(&pool, &next).await.expect("next");
    assert_eq!(rows(&pool).await, expected(&next));
}

//! The billing order: the message the gateway publishes and the billing worker consumes, with the
//! one validation both apply, so that what the gateway accepts is exactly what billing can store.

use std::str::FromStr;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Name of the durable queue orders travel through, unless `BILLING_QUEUE` says otherwise.
pub const DEFAULT_BILLING_QUEUE: &str = "billing_queue";

/// Longest accepted `user_id`, in characters; the column is `VARCHAR(255)`.
pub const MAX_USER_ID_CHARS: usize = 255;

/// Largest accepted `total_amount` (exclusive): the column is `NUMERIC(14, 2)`.
const MAX_TOTAL_AMOUNT: Decimal = Decimal::from_parts(1_215_752_192, 23, 0, false, 0); // 10^11

/// Largest number of decimal places a `total_amount` may carry (cents).
pub const MAX_AMOUNT_SCALE: u32 = 2;

/// The dead-letter queue of `queue`: where billing puts, with the reason, every message it cannot
/// parse or validate, so that it is neither lost nor retried forever.
pub fn dead_letter_queue_name(queue: &str) -> String {
    format!("{queue}.dead-letter")
}

/// A validated order. Serialised with `total_amount` as a string so that no float ever touches it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BillingOrder {
    /// Who ordered; 1 to 255 characters.
    pub user_id: String,
    /// How many items; a positive integer.
    pub number_of_items: i32,
    /// What it costs; non-negative, at most two decimal places, below 10^11.
    #[serde(with = "rust_decimal::serde::str")]
    pub total_amount: Decimal,
}

/// Why a body is not an acceptable order. The `Display` text is safe to show a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    /// The body is not JSON, or not a JSON object.
    #[error("body is not a JSON object: {0}")]
    NotAnObject(String),
    /// A required field is absent or null.
    #[error("{0} is required")]
    Missing(&'static str),
    /// A field is present but its value is not acceptable.
    #[error("{field} {reason}")]
    Invalid {
        field: &'static str,
        reason: &'static str,
    },
}

impl OrderError {
    /// The field at fault, if the error is about one field.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            Self::NotAnObject(_) => None,
            Self::Missing(field) | Self::Invalid { field, .. } => Some(field),
        }
    }
}

impl BillingOrder {
    /// Parses and validates a raw body. Every value may arrive as a JSON string or a JSON number
    /// (clients of the original system post `"20"` as readily as `20`); unknown fields are ignored.
    pub fn from_json_slice(body: &[u8]) -> Result<Self, OrderError> {
        let value: Value =
            serde_json::from_slice(body).map_err(|err| OrderError::NotAnObject(err.to_string()))?;
        Self::from_json_value(&value)
    }

    /// Same as [`BillingOrder::from_json_slice`], for an already parsed value.
    pub fn from_json_value(value: &Value) -> Result<Self, OrderError> {
        let Value::Object(map) = value else {
            return Err(OrderError::NotAnObject(format!(
                "expected an object, found {}",
                json_kind(value)
            )));
        };
        let field = |name: &'static str| match map.get(name) {
            None | Some(Value::Null) => Err(OrderError::Missing(name)),
            Some(v) => Ok(v),
        };
        Ok(Self {
            user_id: parse_user_id(field("user_id")?)?,
            number_of_items: parse_number_of_items(field("number_of_items")?)?,
            total_amount: parse_total_amount(field("total_amount")?)?,
        })
    }

    /// The canonical JSON the gateway publishes.
    pub fn to_json_vec(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A JSON string or number as text; anything else is refused.
fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.trim().to_owned()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn parse_user_id(value: &Value) -> Result<String, OrderError> {
    const FIELD: &str = "user_id";
    let text = scalar_text(value).ok_or(OrderError::Invalid {
        field: FIELD,
        reason: "must be a string or a number",
    })?;
    if text.is_empty() {
        return Err(OrderError::Invalid {
            field: FIELD,
            reason: "must not be empty",
        });
    }
    if text.chars().count() > MAX_USER_ID_CHARS {
        return Err(OrderError::Invalid {
            field: FIELD,
            reason: "must be at most 255 characters",
        });
    }
    Ok(text)
}

fn parse_number_of_items(value: &Value) -> Result<i32, OrderError> {
    const FIELD: &str = "number_of_items";
    let invalid = OrderError::Invalid {
        field: FIELD,
        reason: "must be a positive integer",
    };
    let text = scalar_text(value).ok_or(invalid.clone())?;
    let n: i64 = text.parse().map_err(|_| invalid.clone())?;
    if n < 1 {
        return Err(invalid);
    }
    i32::try_from(n).map_err(|_| OrderError::Invalid {
        field: FIELD,
        reason: "is too large",
    })
}

fn parse_total_amount(value: &Value) -> Result<Decimal, OrderError> {
    const FIELD: &str = "total_amount";
    let invalid = OrderError::Invalid {
        field: FIELD,
        reason: "must be a non-negative decimal number",
    };
    let text = scalar_text(value).ok_or(invalid.clone())?;
    // JSON numbers reach us as their shortest round-trip text ("99.97"), so no float rounding
    // creeps in; exponents ("1e3") are accepted through the scientific parser.
    let amount = Decimal::from_str_exact(&text)
        .or_else(|_| Decimal::from_scientific(&text))
        .map_err(|_| invalid.clone())?
        .normalize();
    if amount.is_sign_negative() && !amount.is_zero() {
        return Err(invalid);
    }
    if amount.scale() > MAX_AMOUNT_SCALE {
        return Err(OrderError::Invalid {
            field: FIELD,
            reason: "must have at most 2 decimal places",
        });
    }
    if amount >= MAX_TOTAL_AMOUNT {
        return Err(OrderError::Invalid {
            field: FIELD,
            reason: "is too large",
        });
    }
    Ok(amount.abs())
}

impl FromStr for BillingOrder {
    type Err = OrderError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_json_slice(s.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(json: &str) -> Result<BillingOrder, OrderError> {
        json.parse()
    }

    #[test]
    fn accepts_numbers_as_in_the_original_curl_example() {
        let o = order(r#"{"user_id": "usr_123", "number_of_items": 3, "total_amount": 99.97}"#)
            .expect("valid");
        assert_eq!(o.user_id, "usr_123");
        assert_eq!(o.number_of_items, 3);
        assert_eq!(o.total_amount.to_string(), "99.97");
    }

    #[test]
    fn accepts_strings_as_posted_by_the_audit() {
        let o = order(r#"{"user_id": "20", "number_of_items": "99", "total_amount": "250"}"#)
            .expect("valid");
        assert_eq!(o.user_id, "20");
        assert_eq!(o.number_of_items, 99);
        assert_eq!(o.total_amount, Decimal::from(250));
    }

    #[test]
    fn accepts_numeric_user_id_and_zero_amount() {
        let o =
            order(r#"{"user_id": 42, "number_of_items": 1, "total_amount": 0}"#).expect("valid");
        assert_eq!(o.user_id, "42");
        assert!(o.total_amount.is_zero());
    }

    #[test]
    fn amount_keeps_exact_cents_without_float_rounding() {
        let o =
            order(r#"{"user_id": "u", "number_of_items": 1, "total_amount": 0.1}"#).expect("ok");
        assert_eq!(o.total_amount.to_string(), "0.1");
        let o =
            order(r#"{"user_id": "u", "number_of_items": 1, "total_amount": "1e2"}"#).expect("ok");
        assert_eq!(o.total_amount, Decimal::from(100));
    }

    #[test]
    fn refuses_bad_values_naming_the_field() {
        let cases = [
            (r#"{"number_of_items": 1, "total_amount": 1}"#, "user_id"),
            (
                r#"{"user_id": "", "number_of_items": 1, "total_amount": 1}"#,
                "user_id",
            ),
            (
                r#"{"user_id": [], "number_of_items": 1, "total_amount": 1}"#,
                "user_id",
            ),
            (
                r#"{"user_id": "u", "number_of_items": 0, "total_amount": 1}"#,
                "number_of_items",
            ),
            (
                r#"{"user_id": "u", "number_of_items": -2, "total_amount": 1}"#,
                "number_of_items",
            ),
            (
                r#"{"user_id": "u", "number_of_items": 2.5, "total_amount": 1}"#,
                "number_of_items",
            ),
            (
                r#"{"user_id": "u", "number_of_items": "x", "total_amount": 1}"#,
                "number_of_items",
            ),
            (
                r#"{"user_id": "u", "number_of_items": 1e10, "total_amount": 1}"#,
                "number_of_items",
            ),
            (
                r#"{"user_id": "u", "number_of_items": 1, "total_amount": -1}"#,
                "total_amount",
            ),
            (
                r#"{"user_id": "u", "number_of_items": 1, "total_amount": "abc"}"#,
                "total_amount",
            ),
            (
                r#"{"user_id": "u", "number_of_items": 1, "total_amount": 1.234}"#,
                "total_amount",
            ),
            (
                r#"{"user_id": "u", "number_of_items": 1, "total_amount": 1e12}"#,
                "total_amount",
            ),
            (
                r#"{"user_id": "u", "number_of_items": 1, "total_amount": null}"#,
                "total_amount",
            ),
            (
                r#"{"user_id": "u", "number_of_items": 1, "total_amount": true}"#,
                "total_amount",
            ),
        ];
        for (json, field) in cases {
            let err = order(json).expect_err(json);
            assert_eq!(err.field(), Some(field), "{json}: {err}");
        }
    }

    #[test]
    fn refuses_non_objects() {
        for json in ["", "not json", "[1,2]", "\"x\"", "null", "{"] {
            let err = order(json).expect_err(json);
            assert!(matches!(err, OrderError::NotAnObject(_)), "{json}: {err}");
        }
    }

    #[test]
    fn user_id_length_is_bounded() {
        let long = "x".repeat(256);
        let json = format!(r#"{{"user_id": "{long}", "number_of_items": 1, "total_amount": 1}}"#);
        assert_eq!(order(&json).expect_err("too long").field(), Some("user_id"));
    }

    #[test]
    fn canonical_json_round_trips_with_amount_as_string() {
        let o =
            order(r#"{"user_id": "u", "number_of_items": 2, "total_amount": 10.5}"#).expect("ok");
        let bytes = o.to_json_vec();
        let text = String::from_utf8(bytes.clone()).expect("utf8");
        assert!(text.contains(r#""total_amount":"10.5""#), "{text}");
        assert_eq!(
            BillingOrder::from_json_slice(&bytes).expect("round trip"),
            o
        );
    }

    #[test]
    fn dead_letter_queue_is_derived_from_the_queue() {
        assert_eq!(
            dead_letter_queue_name("billing_queue"),
            "billing_queue.dead-letter"
        );
    }
}

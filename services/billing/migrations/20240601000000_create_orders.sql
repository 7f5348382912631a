-- The orders billing stores, one row per accepted message. `message_id` is the AMQP message id the
-- gateway sets: UNIQUE makes a redelivered message a no-op, and NULL (allowed many times) keeps
-- messages that arrive without one.
CREATE TABLE orders (
    id              BIGSERIAL      PRIMARY KEY,
    message_id      UUID           UNIQUE,
    user_id         VARCHAR(255)   NOT NULL,
    number_of_items INTEGER        NOT NULL CHECK (number_of_items > 0),
    total_amount    NUMERIC(14, 2) NOT NULL CHECK (total_amount >= 0),
    created_at      TIMESTAMPTZ    NOT NULL DEFAULT now()
);

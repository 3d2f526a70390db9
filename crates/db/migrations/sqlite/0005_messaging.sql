-- Asynchronism: the outbox (events committed with the write that caused them), the
-- messages consumers already handled (so a redelivery has no second effect), the
-- users' notifications (the push service's durable log), and the embedded broker's
-- queues (used when BAKERY_BROKER_URL is not a RabbitMQ).

-- A row per event to publish; the relay deletes it once the broker confirmed it.
CREATE TABLE outbox (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    exchange       TEXT    NOT NULL,
    message_id     TEXT    NOT NULL UNIQUE,
    correlation_id TEXT    NOT NULL,
    kind           TEXT    NOT NULL,
    body           TEXT    NOT NULL,
    created_at     BIGINT  NOT NULL,
    -- A relay publishing the row holds it until then (another takes over after).
    claimed_until  BIGINT  NOT NULL DEFAULT 0
);
CREATE INDEX outbox_created ON outbox (created_at);

CREATE TABLE handled_messages (
    consumer   TEXT   NOT NULL,
    message_id TEXT   NOT NULL,
    handled_at BIGINT NOT NULL,
    PRIMARY KEY (consumer, message_id)
);

CREATE TABLE notifications (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id    BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind       TEXT   NOT NULL,
    payload    TEXT   NOT NULL,
    message_id TEXT   NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);
CREATE INDEX notifications_user ON notifications (user_id, id);

CREATE TABLE broker_messages (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    queue          TEXT    NOT NULL,
    message_id     TEXT    NOT NULL,
    correlation_id TEXT    NOT NULL,
    kind           TEXT    NOT NULL,
    body           TEXT    NOT NULL,
    -- Deliveries so far (a lease taken counts one).
    attempts       INTEGER NOT NULL DEFAULT 0,
    due_at         BIGINT  NOT NULL,
    leased_until   BIGINT  NOT NULL DEFAULT 0,
    last_error     TEXT,
    created_at     BIGINT  NOT NULL,
    dead_at        BIGINT
);
CREATE UNIQUE INDEX broker_messages_queue_message ON broker_messages (queue, message_id);
CREATE INDEX broker_messages_ready ON broker_messages (queue, due_at, id);

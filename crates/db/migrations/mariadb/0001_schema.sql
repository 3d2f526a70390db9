-- The whole schema for MariaDB (10.6 or later), as the PostgreSQL migrations
-- 0001-0013 leave it; later changes come as migrations of their own, on every engine.
-- Differences, each for a reason:
-- * text that is a key or indexed is VARCHAR (an index needs a bounded length);
--   long text is LONGTEXT, bytes LONGBLOB;
-- * tables compare text exactly (utf8mb4_bin), as PostgreSQL and SQLite do, except
--   a username, unique whatever its case (utf8mb4_unicode_ci);
-- * the one partial unique index (one queued job per dedupe key) is a unique index
--   on a generated column that holds the key only while the job is queued;
-- * no database roles are made: the load balancer's own login is a PostgreSQL
--   feature (BAKERY_LB_DATABASE_URL).

CREATE TABLE users (
    id             BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    username       VARCHAR(255) COLLATE utf8mb4_unicode_ci NOT NULL,
    email          VARCHAR(320) NOT NULL,
    password_hash  TEXT         NOT NULL,
    is_admin       BIGINT       NOT NULL DEFAULT 0,
    created_at     BIGINT       NOT NULL,
    email_verified BIGINT       NOT NULL DEFAULT 0,
    UNIQUE KEY users_username_key (username)
) DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE products (
    id         BIGINT   NOT NULL AUTO_INCREMENT PRIMARY KEY,
    name       TEXT     NOT NULL,
    created_at BIGINT   NOT NULL,
    updated_at BIGINT   NOT NULL,
    version    BIGINT   NOT NULL DEFAULT 0,
    changed_at BIGINT   NOT NULL DEFAULT 0
) DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE product_prices (
    product_id  BIGINT NOT NULL PRIMARY KEY,
    price_cents BIGINT NOT NULL CHECK (price_cents >= 0),
    updated_at  BIGINT NOT NULL,
    CONSTRAINT product_prices_product FOREIGN KEY (product_id) REFERENCES products (id) ON DELETE CASCADE
) DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE product_descriptions (
    product_id  BIGINT   NOT NULL PRIMARY KEY,
    description LONGTEXT NOT NULL,
    updated_at  BIGINT   NOT NULL,
    CONSTRAINT product_descriptions_product FOREIGN KEY (product_id) REFERENCES products (id) ON DELETE CASCADE
) DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE product_images (
    id         BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    product_id BIGINT NOT NULL,
    url        TEXT   NOT NULL,
    thumb_url  TEXT   NOT NULL,
    created_at BIGINT NOT NULL,
    job_id     BIGINT,
    KEY product_images_product (product_id),
    UNIQUE KEY product_images_job (job_id),
    CONSTRAINT product_images_of FOREIGN KEY (product_id) REFERENCES products (id) ON DELETE CASCADE
) DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE reviews (
    id         BIGINT   NOT NULL AUTO_INCREMENT PRIMARY KEY,
    product_id BIGINT   NOT NULL,
    user_id    BIGINT   NOT NULL,
    rating     BIGINT   NOT NULL CHECK (rating BETWEEN 1 AND 5),
    body       LONGTEXT NOT NULL,
    created_at BIGINT   NOT NULL,
    KEY reviews_user (user_id),
    UNIQUE KEY reviews_one_per_user (product_id, user_id),
    CONSTRAINT reviews_product FOREIGN KEY (product_id) REFERENCES products (id) ON DELETE CASCADE,
    CONSTRAINT reviews_author FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE
) DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE product_documents (
    product_id BIGINT NOT NULL PRIMARY KEY,
    version    BIGINT NOT NULL,
    body       JSON   NOT NULL,
    stored_at  BIGINT NOT NULL,
    CONSTRAINT product_documents_product FOREIGN KEY (product_id) REFERENCES products (id) ON DELETE CASCADE
) DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE events (
    id          BIGINT   NOT NULL AUTO_INCREMENT PRIMARY KEY,
    title       TEXT     NOT NULL,
    description LONGTEXT NOT NULL,
    starts_at   BIGINT   NOT NULL,
    capacity    BIGINT   NOT NULL CHECK (capacity >= 0),
    attendees   BIGINT   NOT NULL DEFAULT 0,
    created_at  BIGINT   NOT NULL,
    CONSTRAINT events_seats CHECK (attendees >= 0 AND attendees <= capacity)
) DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE rsvps (
    id                   BIGINT      NOT NULL AUTO_INCREMENT PRIMARY KEY,
    event_id             BIGINT      NOT NULL,
    user_id              BIGINT      NOT NULL,
    status               VARCHAR(32) NOT NULL DEFAULT 'confirmed',
    created_at           BIGINT      NOT NULL,
    confirmation_sent_at BIGINT,
    UNIQUE KEY rsvps_event_user_key (event_id, user_id),
    KEY rsvps_user (user_id),
    CONSTRAINT rsvps_event FOREIGN KEY (event_id) REFERENCES events (id) ON DELETE CASCADE,
    CONSTRAINT rsvps_guest FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE
) DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE bakery_instance (id VARCHAR(64) NOT NULL) DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
INSERT INTO bakery_instance (id) SELECT SUBSTR(MD5(CONCAT(UUID(), RAND(), NOW(6))), 1, 16);

CREATE TABLE outbox (
    id             BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    exchange       VARCHAR(255) NOT NULL,
    message_id     VARCHAR(255) NOT NULL,
    correlation_id VARCHAR(255) NOT NULL,
    kind           VARCHAR(255) NOT NULL,
    body           LONGTEXT     NOT NULL,
    created_at     BIGINT       NOT NULL,
    claimed_until  BIGINT       NOT NULL DEFAULT 0,
    UNIQUE KEY outbox_message (message_id),
    KEY outbox_created (created_at)
) DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE handled_messages (
    consumer   VARCHAR(255) NOT NULL,
    message_id VARCHAR(255) NOT NULL,
    handled_at BIGINT       NOT NULL,
    PRIMARY KEY (consumer, message_id)
) DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE notifications (
    id             BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    user_id        BIGINT       NOT NULL,
    kind           VARCHAR(255) NOT NULL,
    payload        LONGTEXT     NOT NULL,
    message_id     VARCHAR(255) NOT NULL,
    created_at     BIGINT       NOT NULL,
    correlation_id VARCHAR(255) NOT NULL DEFAULT '',
    UNIQUE KEY notifications_message (message_id),
    KEY notifications_user (user_id, id),
    CONSTRAINT notifications_for FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE
) DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE broker_messages (
    id             BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    queue          VARCHAR(255) NOT NULL,
    message_id     VARCHAR(255) NOT NULL,
    correlation_id VARCHAR(255) NOT NULL,
    kind           VARCHAR(255) NOT NULL,
    body           LONGTEXT     NOT NULL,
    attempts       BIGINT       NOT NULL DEFAULT 0,
    due_at         BIGINT       NOT NULL,
    leased_until   BIGINT       NOT NULL DEFAULT 0,
    last_error     LONGTEXT,
    created_at     BIGINT       NOT NULL,
    dead_at        BIGINT,
    UNIQUE KEY broker_messages_queue_message (queue, message_id),
    KEY broker_messages_ready (queue, due_at, id)
) DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE jobs (
    id            BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    kind          VARCHAR(64)  NOT NULL,
    owner_id      BIGINT,
    state         VARCHAR(32)  NOT NULL DEFAULT 'queued',
    progress      BIGINT       NOT NULL DEFAULT 0,
    attempts      BIGINT       NOT NULL DEFAULT 0,
    max_attempts  BIGINT       NOT NULL,
    payload       LONGTEXT     NOT NULL,
    result        LONGTEXT,
    error         LONGTEXT,
    run_at        BIGINT       NOT NULL,
    dispatched_at BIGINT,
    worker        VARCHAR(255),
    lease_until   BIGINT       NOT NULL DEFAULT 0,
    created_at    BIGINT       NOT NULL,
    started_at    BIGINT,
    finished_at   BIGINT,
    dedupe_key    VARCHAR(255),
    -- The dedupe key while the job is queued, else NULL (which a unique index allows
    -- any number of): PostgreSQL's `UNIQUE (dedupe_key) WHERE state = 'queued'`.
    queued_key    VARCHAR(255) AS (CASE WHEN state = 'queued' THEN dedupe_key END) PERSISTENT,
    KEY jobs_state (state, run_at),
    KEY jobs_owner (owner_id, id),
    UNIQUE KEY jobs_queued_key (queued_key),
    CONSTRAINT jobs_owner FOREIGN KEY (owner_id) REFERENCES users (id) ON DELETE SET NULL
) DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE pages (
    slug          VARCHAR(255) NOT NULL PRIMARY KEY,
    title         TEXT         NOT NULL,
    body_markdown LONGTEXT     NOT NULL,
    updated_at    BIGINT       NOT NULL
) DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE edge_pages (
    path           VARCHAR(700)  NOT NULL PRIMARY KEY,
    content_type   VARCHAR(255)  NOT NULL,
    etag           VARCHAR(255)  NOT NULL,
    body           LONGBLOB      NOT NULL,
    gzip           LONGBLOB      NOT NULL,
    br             LONGBLOB      NOT NULL,
    immutable      BIGINT        NOT NULL DEFAULT 0,
    stale          BIGINT        NOT NULL DEFAULT 0,
    gone           BIGINT        NOT NULL DEFAULT 0,
    updated_at     BIGINT        NOT NULL,
    source_read_at BIGINT        NOT NULL DEFAULT 0,
    KEY edge_pages_updated (updated_at)
) DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE email_tokens (
    token_digest VARCHAR(128) NOT NULL PRIMARY KEY,
    user_id      BIGINT       NOT NULL,
    email        VARCHAR(320) NOT NULL,
    expires_at   BIGINT       NOT NULL,
    used_at      BIGINT,
    CONSTRAINT email_tokens_for FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE
) DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE mail_sent (
    message_id VARCHAR(255) NOT NULL PRIMARY KEY,
    user_id    BIGINT       NOT NULL,
    sent_at    BIGINT       NOT NULL,
    KEY mail_sent_by_user (user_id, sent_at)
) DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE processes (
    id         VARCHAR(255) NOT NULL PRIMARY KEY,
    role       VARCHAR(64)  NOT NULL,
    addr       VARCHAR(255) NOT NULL,
    host       VARCHAR(255) NOT NULL,
    pid        BIGINT       NOT NULL,
    started_at BIGINT       NOT NULL,
    seen_at    BIGINT       NOT NULL,
    starts     BIGINT       NOT NULL DEFAULT 1
) DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE journey (
    id             BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    correlation_id VARCHAR(255) NOT NULL,
    at             BIGINT       NOT NULL,
    process        VARCHAR(255) NOT NULL,
    what           TEXT         NOT NULL,
    detail         LONGTEXT     NOT NULL,
    KEY journey_correlation (correlation_id, at),
    KEY journey_at (at)
) DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

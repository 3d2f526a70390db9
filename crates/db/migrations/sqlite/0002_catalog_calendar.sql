-- The catalog keeps each part of a product in its own table, as a real catalog
-- whose parts change at different rates (and come from different services) would:
-- this is what makes the assembled, cached `Product:{id}` object worth having.
CREATE TABLE products (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    name       TEXT    NOT NULL,
    created_at BIGINT  NOT NULL,
    updated_at BIGINT  NOT NULL
);
CREATE TABLE product_prices (
    product_id  BIGINT PRIMARY KEY REFERENCES products (id) ON DELETE CASCADE,
    price_cents BIGINT NOT NULL CHECK (price_cents >= 0),
    updated_at  BIGINT NOT NULL
);
CREATE TABLE product_descriptions (
    product_id  BIGINT PRIMARY KEY REFERENCES products (id) ON DELETE CASCADE,
    description TEXT   NOT NULL,
    updated_at  BIGINT NOT NULL
);
CREATE TABLE product_images (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    product_id BIGINT NOT NULL REFERENCES products (id) ON DELETE CASCADE,
    url        TEXT   NOT NULL,
    thumb_url  TEXT   NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX product_images_product ON product_images (product_id);
CREATE TABLE reviews (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    product_id BIGINT NOT NULL REFERENCES products (id) ON DELETE CASCADE,
    user_id    BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    rating     BIGINT NOT NULL CHECK (rating BETWEEN 1 AND 5),
    body       TEXT   NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX reviews_product ON reviews (product_id);
CREATE INDEX reviews_user ON reviews (user_id);

-- `attendees` is kept beside `capacity` so one conditional UPDATE both checks and
-- takes a seat: that row's lock is what keeps capacity from being exceeded.
CREATE TABLE events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    title       TEXT   NOT NULL,
    description TEXT   NOT NULL,
    starts_at   BIGINT NOT NULL,
    capacity    BIGINT NOT NULL CHECK (capacity >= 0),
    attendees   BIGINT NOT NULL DEFAULT 0 CHECK (attendees >= 0 AND attendees <= capacity),
    created_at  BIGINT NOT NULL
);
CREATE TABLE rsvps (
    id                   INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id             BIGINT NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    user_id              BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    status               TEXT   NOT NULL DEFAULT 'confirmed',
    created_at           BIGINT NOT NULL,
    confirmation_sent_at BIGINT
);
CREATE UNIQUE INDEX rsvps_event_user_key ON rsvps (event_id, user_id);
CREATE INDEX rsvps_user ON rsvps (user_id);

CREATE TABLE pages (
    slug          TEXT PRIMARY KEY,
    title         TEXT   NOT NULL,
    body_markdown TEXT   NOT NULL,
    updated_at    BIGINT NOT NULL
);

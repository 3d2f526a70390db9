-- Accounts. Usernames are unique regardless of case, so "Ann" cannot shadow "ann".
CREATE TABLE users (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    username      TEXT    NOT NULL,
    email         TEXT    NOT NULL,
    password_hash TEXT    NOT NULL,
    is_admin      BIGINT  NOT NULL DEFAULT 0, -- 0 or 1: sqlx's Any driver cannot decode SQLite booleans
    created_at    BIGINT  NOT NULL
);
CREATE UNIQUE INDEX users_username_key ON users (lower(username));

-- Addresses are verified before transactional mail goes to them: a mail with a
-- single-use, expiring token proves the address is its owner's. Accounts made
-- before verification existed keep getting their mail.
ALTER TABLE users ADD COLUMN email_verified BIGINT NOT NULL DEFAULT 0;
UPDATE users SET email_verified = 1;

-- Tokens of verification mails, stored only as their SHA-256 (hex), for the
-- address they verify.
CREATE TABLE email_tokens (
    token_digest TEXT   PRIMARY KEY,
    user_id      BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    email        TEXT   NOT NULL,
    expires_at   BIGINT NOT NULL,
    used_at      BIGINT
);

-- Transactional mail sent to each user, one row per message, for the per-user
-- budget (a repeated RSVP and cancel does not send a mail each time).
CREATE TABLE mail_sent (
    message_id TEXT   PRIMARY KEY,
    user_id    BIGINT NOT NULL,
    sent_at    BIGINT NOT NULL
);
CREATE INDEX mail_sent_by_user ON mail_sent (user_id, sent_at);

-- Path 2 of the lesson: one de-normalised document per product, kept by a consumer
-- of `product.changed` that does the joins in its own code (`db::documents`).
-- Every write that changes a product's parts bumps `version` in its transaction;
-- a document says which version it reflects, and an older one never replaces a newer.
ALTER TABLE products ADD COLUMN version BIGINT NOT NULL DEFAULT 0;
ALTER TABLE products ADD COLUMN changed_at BIGINT NOT NULL DEFAULT 0;
-- JSONB: a document store's own type (queryable and indexable, were it needed).
-- The foreign key makes a product's deletion take its document along, and makes a
-- late consumer's insert for a deleted product fail rather than bring it back.
CREATE TABLE product_documents (
    product_id BIGINT PRIMARY KEY REFERENCES products (id) ON DELETE CASCADE,
    version    BIGINT NOT NULL,
    body       JSONB  NOT NULL,
    stored_at  BIGINT NOT NULL
);

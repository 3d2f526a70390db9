-- A product's newest reviews, found in order (see the PostgreSQL migration).
CREATE INDEX reviews_product_newest ON reviews (product_id, id);

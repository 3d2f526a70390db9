-- A product's newest reviews, found in order (see PostgreSQL's 0014).
CREATE INDEX reviews_product_newest ON reviews (product_id, id);

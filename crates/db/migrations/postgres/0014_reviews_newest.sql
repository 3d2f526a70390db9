-- A product's newest reviews (the object, its document and the review pages read
-- `WHERE product_id = $1 ORDER BY id DESC LIMIT n`): found by this index in order.
-- Without it a large catalog's planner walked the primary key backwards, filtering
-- (the read-models benchmark: 30 documents a second at a million reviews).
CREATE INDEX reviews_product_newest ON reviews (product_id, id);

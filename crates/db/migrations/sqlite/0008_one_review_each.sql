-- One review per user per product (a second is refused; the author edits the first).
-- Earlier duplicates keep their newest.
DELETE FROM reviews WHERE id NOT IN (SELECT MAX(id) FROM reviews GROUP BY product_id, user_id);
CREATE UNIQUE INDEX reviews_one_per_user ON reviews (product_id, user_id);

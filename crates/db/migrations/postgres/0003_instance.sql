-- This database's identity: a random id made once, when the schema is created. The
-- cache and the session store prefix their keys with it, so a store shared by two
-- deployments, or outliving a database recreated under the same URL, never hands one
-- database's objects or sessions to another.
CREATE TABLE bakery_instance (id TEXT NOT NULL);
INSERT INTO bakery_instance (id) SELECT substr(md5(random()::text || clock_timestamp()::text), 1, 16);

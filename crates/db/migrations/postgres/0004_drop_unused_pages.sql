-- The pages table of 0002 was made ahead of its use and never used; the pre-rendered
-- pages issue creates the tables it needs.
DROP TABLE pages;

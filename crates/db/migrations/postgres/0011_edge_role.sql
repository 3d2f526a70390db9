-- Least privilege for the load balancers (issue 25, 12): a role that may read only
-- what the edge follows (its pages, and the migration table that says the schema is
-- current). An operator gives a balancer a login in it (CREATE ROLE lb LOGIN PASSWORD
-- '...' IN ROLE bakery_edge) and its URL as BAKERY_LB_DATABASE_URL. Roles belong to
-- the whole cluster: it is made once (two databases migrated at the same moment
-- may race to make it; the loser finds it made), and a migrating role that may not
-- make roles leaves it to the operator (a notice, not a failure).
DO $$
BEGIN
    BEGIN
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'bakery_edge') THEN
            CREATE ROLE bakery_edge NOLOGIN;
        END IF;
    EXCEPTION
        WHEN duplicate_object OR unique_violation THEN NULL;
        WHEN insufficient_privilege THEN
            RAISE NOTICE 'bakery_edge not made: the migrating role may not create roles';
    END;
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'bakery_edge') THEN
        GRANT SELECT ON edge_pages, _sqlx_migrations TO bakery_edge;
    END IF;
END
$$;

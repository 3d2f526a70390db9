-- PostgreSQL makes a read-only role for the load balancers here; SQLite has no
-- roles (the file's permissions are the boundary). Kept so both engines count the
-- same migrations.
SELECT 1;

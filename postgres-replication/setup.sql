-- Roles and database, run on the primary as the superuser by cluster.sh. Idempotent.
-- psql variables: app_password, replicator_password, debezium_password, analyst_password, db.
SELECT format('CREATE ROLE replicator LOGIN REPLICATION')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'replicator') \gexec
SELECT format('CREATE ROLE paystream LOGIN')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'paystream') \gexec
-- Debezium needs REPLICATION, SELECT for snapshots, and membership of the table
-- owner's role so that its filtered publication can name the payments table.
SELECT format('CREATE ROLE debezium LOGIN REPLICATION IN ROLE paystream')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'debezium') \gexec
-- Analysts read the replicas only; this role never writes.
SELECT format('CREATE ROLE analyst LOGIN')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'analyst') \gexec
ALTER ROLE replicator PASSWORD :'replicator_password';
ALTER ROLE paystream PASSWORD :'app_password';
ALTER ROLE debezium PASSWORD :'debezium_password';
ALTER ROLE analyst PASSWORD :'analyst_password';
-- Analytics say whether the replica they read is streaming from the primary, which
-- pg_stat_wal_receiver only shows to members of this role.
GRANT pg_read_all_stats TO paystream, analyst;
SELECT format('CREATE DATABASE %I OWNER paystream', :'db')
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db') \gexec
GRANT CREATE, CONNECT ON DATABASE :"db" TO debezium;
GRANT CONNECT ON DATABASE :"db" TO analyst;
\connect :"db"
-- What each statement costs the primary (loaded by shared_preload_libraries).
CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
-- Tables are created later by the migrations, as paystream; these make the analyst
-- able to read whatever they create.
ALTER DEFAULT PRIVILEGES FOR ROLE paystream IN SCHEMA public GRANT SELECT ON TABLES TO analyst;
GRANT USAGE ON SCHEMA public TO analyst;

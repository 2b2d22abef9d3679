-- pgp's Snowflake set-up, run once by an ACCOUNTADMIN (review before running).
-- Replace the placeholders in <angle brackets>. Everything pgp needs and nothing more:
--   * a storage integration that lets Snowflake read the GCS staging bucket;
--   * the RAW database's stage and file format pgp loads through;
--   * a PGP_LOADER role that can create, load, swap and drop tables in the schemas it
--     loads (and nothing in other databases), use one warehouse, and read the stage;
--   * a key-pair service user (no password) with that role.

USE ROLE ACCOUNTADMIN;

-- 1. Read access to the bucket. After creating it, run
--      DESC STORAGE INTEGRATION PGP_GCS;
--    and grant its STORAGE_GCP_SERVICE_ACCOUNT roles/storage.objectViewer on the bucket:
--      gcloud storage buckets add-iam-policy-binding gs://<bucket> \
--        --member=serviceAccount:<STORAGE_GCP_SERVICE_ACCOUNT> --role=roles/storage.objectViewer
CREATE STORAGE INTEGRATION IF NOT EXISTS PGP_GCS
  TYPE = EXTERNAL_STAGE
  STORAGE_PROVIDER = 'GCS'
  ENABLED = TRUE
  STORAGE_ALLOWED_LOCATIONS = ('gcs://<bucket>/');

-- 2. Role and warehouse.
CREATE ROLE IF NOT EXISTS PGP_LOADER;
CREATE WAREHOUSE IF NOT EXISTS PGP_LOADING
  WAREHOUSE_SIZE = XSMALL AUTO_SUSPEND = 60 AUTO_RESUME = TRUE INITIALLY_SUSPENDED = TRUE;
GRANT USAGE ON WAREHOUSE PGP_LOADING TO ROLE PGP_LOADER;
GRANT USAGE ON INTEGRATION PGP_GCS TO ROLE PGP_LOADER;

-- 3. The database pgp loads into. pgp creates the target schemas' tables, each run's
--    load table <table>_PGP_LOAD_<run> and swap table <table>_PGP_SWAP_<run>_<attempt>,
--    and its schema _PGP (run table, load ledger, one lock table per target); it needs
--    ownership of what it creates (SWAP WITH and DROP require it), hence CREATE SCHEMA
--    on the database.
CREATE DATABASE IF NOT EXISTS RAW;
GRANT USAGE, CREATE SCHEMA ON DATABASE RAW TO ROLE PGP_LOADER;
-- Existing target schemas (e.g. GitLab's export_schema values) must be owned by, or
-- grant these to, PGP_LOADER:
--   GRANT USAGE, CREATE TABLE ON SCHEMA RAW.<schema> TO ROLE PGP_LOADER;

-- 4. Stage and file format, owned by the loader role. The file format is exactly
--    pgp's SNOWFLAKE_FILE_FORMAT (shared/src/format.rs argues every option): PostgreSQL
--    COPY ... (FORMAT csv, DELIMITER E'\t', NULL '') — NULL is an empty unquoted field,
--    an empty string is "", quotes inside fields are doubled.
USE ROLE PGP_LOADER;
CREATE SCHEMA IF NOT EXISTS RAW._PGP;
CREATE FILE FORMAT IF NOT EXISTS RAW._PGP.PGP_TSV
  TYPE = CSV
  FIELD_DELIMITER = '\t'
  RECORD_DELIMITER = '\n'
  FIELD_OPTIONALLY_ENCLOSED_BY = '"'
  ESCAPE = NONE
  ESCAPE_UNENCLOSED_FIELD = NONE
  EMPTY_FIELD_AS_NULL = TRUE
  NULL_IF = ()
  SKIP_HEADER = 0
  TRIM_SPACE = FALSE
  ERROR_ON_COLUMN_COUNT_MISMATCH = TRUE
  REPLACE_INVALID_CHARACTERS = FALSE
  SKIP_BYTE_ORDER_MARK = FALSE
  ENCODING = 'UTF8'
  COMPRESSION = GZIP
  TIMESTAMP_FORMAT = AUTO;
CREATE STAGE IF NOT EXISTS RAW._PGP.PGP_STAGE
  URL = 'gcs://<bucket>/'
  STORAGE_INTEGRATION = PGP_GCS
  FILE_FORMAT = RAW._PGP.PGP_TSV;

-- 5. The service user: key-pair authentication only (TYPE = SERVICE has no password).
--    Generate the key pair where the secret will live:
--      openssl genrsa 4096 | openssl pkcs8 -topk8 -nocrypt -out pgp_key.p8
--      openssl rsa -in pgp_key.p8 -pubout -out pgp_key.pub
--    put pgp_key.p8 in Secret Manager (pgp-snowflake-private-key), and paste the public
--    key body (without the BEGIN/END lines) below.
USE ROLE ACCOUNTADMIN;
CREATE USER IF NOT EXISTS PGP_SERVICE
  TYPE = SERVICE
  DEFAULT_ROLE = PGP_LOADER
  DEFAULT_WAREHOUSE = PGP_LOADING
  RSA_PUBLIC_KEY = '<public key body>';
GRANT ROLE PGP_LOADER TO USER PGP_SERVICE;

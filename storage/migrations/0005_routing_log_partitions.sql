-- The routing log, range-partitioned by received_at in monthly partitions, so that retention drops whole
-- partitions instead of deleting rows, and each console query reads only the months it needs.
--
-- * routing_log_default catches any row no monthly partition covers (clock skew, a hub that was down when its
--   partitions were due), so no row is ever lost; routing_log_add_partition() moves such rows into the month's
--   partition when it is created.
-- * object_id: the location/session/cdr/token/tariff id a path names, stored at write time so an auditor can find
--   every message about one object through an index (not part of the hashed content: it is derived from path).
-- * routing_log_floor: for each chain, the seq and hash of every dropped row whose successor was kept, so verify()
--   continues a chain from a recorded hash after retention dropped its beginning.
-- Existing rows are copied into the new table with their ids, hashes and chains unchanged.

DROP INDEX routing_log_request_id, routing_log_correlation_id, routing_log_received_at;
ALTER TABLE routing_log DROP CONSTRAINT routing_log_pkey, DROP CONSTRAINT routing_log_chain_id_seq_key;
ALTER TABLE routing_log RENAME TO routing_log_unpartitioned;

CREATE SEQUENCE routing_log_row_id AS bigint;

CREATE TABLE routing_log (
    id                     bigint NOT NULL DEFAULT nextval('routing_log_row_id'),
    received_at            timestamptz NOT NULL,
    chain_id               uuid NOT NULL,
    seq                    bigint NOT NULL,
    request_id             text NOT NULL,
    forwarded_request_id   text,
    correlation_id         text NOT NULL,
    from_country_code      text,
    from_party_id          text,
    to_country_code        text,
    to_party_id            text,
    caller_platform_id     bigint,
    receiver_platform_id   bigint,
    module                 text NOT NULL,
    interface              text,
    method                 text NOT NULL,
    path                   text NOT NULL,
    query                  text NOT NULL DEFAULT '',
    routing                text NOT NULL CHECK (routing IN ('direct', 'broadcast', 'open', 'hub', 'rejected')),
    http_status            integer NOT NULL,
    ocpi_status_code       integer,
    duration_ms            double precision NOT NULL,
    error                  text,
    request_headers        jsonb,
    response_headers       jsonb,
    request_body           bytea,
    request_body_size      integer NOT NULL DEFAULT 0,
    response_body          bytea,
    response_body_size     integer NOT NULL DEFAULT 0,
    prev_hash              bytea NOT NULL,
    hash                   bytea NOT NULL,
    object_id              text,
    PRIMARY KEY (id, received_at)
) PARTITION BY RANGE (received_at);

ALTER SEQUENCE routing_log_row_id OWNED BY routing_log.id;

CREATE TABLE routing_log_default PARTITION OF routing_log DEFAULT;

-- One index per console query, each ending in (received_at, id): a filtered page is the first rows of one index
-- range, read newest first, partition by partition (ordered Append), with no sort. Low-cardinality columns are
-- indexed only for their rare values, which a scan of the newest rows would take long to find.
CREATE INDEX routing_log_time ON routing_log (received_at, id);
CREATE INDEX routing_log_chain_seq ON routing_log (chain_id, seq);
CREATE INDEX routing_log_request_id ON routing_log (request_id);
CREATE INDEX routing_log_forwarded_request_id ON routing_log (forwarded_request_id)
    WHERE forwarded_request_id IS NOT NULL;
CREATE INDEX routing_log_correlation ON routing_log (correlation_id, received_at, id);
CREATE INDEX routing_log_object ON routing_log (object_id, received_at, id) WHERE object_id IS NOT NULL;
CREATE INDEX routing_log_from_party ON routing_log (from_country_code, from_party_id, received_at, id);
CREATE INDEX routing_log_to_party ON routing_log (to_country_code, to_party_id, received_at, id);
CREATE INDEX routing_log_module ON routing_log (module, received_at, id);
CREATE INDEX routing_log_http_error ON routing_log (http_status, received_at, id) WHERE http_status <> 200;
CREATE INDEX routing_log_ocpi_error ON routing_log (ocpi_status_code, received_at, id)
    WHERE ocpi_status_code <> 1000;
CREATE INDEX routing_log_unusual_routing ON routing_log (routing, received_at, id) WHERE routing <> 'direct';

CREATE TABLE routing_log_floor (
    chain_id    uuid NOT NULL,
    seq         bigint NOT NULL,
    hash        bytea NOT NULL,
    dropped_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (chain_id, seq)
);

-- The partition of the month holding `month` (UTC), created if missing; rows of that month waiting in the default
-- partition move into it. Returns the partition's name, or NULL if it existed.
CREATE FUNCTION routing_log_add_partition(month timestamptz) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    lo timestamptz := date_trunc('month', month AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    hi timestamptz := (date_trunc('month', month AT TIME ZONE 'UTC') + interval '1 month') AT TIME ZONE 'UTC';
    name text := 'routing_log_' || to_char(month AT TIME ZONE 'UTC', 'YYYY"m"MM');
BEGIN
    IF to_regclass(name) IS NOT NULL THEN
        RETURN NULL;
    END IF;
    -- No row of that month may reach the default partition between the move and the attach.
    LOCK TABLE routing_log_default IN ACCESS EXCLUSIVE MODE;
    EXECUTE format('CREATE TABLE %I (LIKE routing_log INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', name);
    EXECUTE format('WITH moved AS (DELETE FROM routing_log_default WHERE received_at >= %L AND received_at < %L'
                   ' RETURNING *) INSERT INTO %I SELECT * FROM moved', lo, hi, name);
    EXECUTE format('ALTER TABLE routing_log ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)', name, lo, hi);
    RETURN name;
END $$;

-- This month's partition and the next months_ahead ones; safe to call from several hub processes at once.
CREATE FUNCTION routing_log_ensure_partitions(months_ahead integer) RETURNS SETOF text LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(210848524);  -- 0x0C914B0C, as in storage/partitions.py
    RETURN QUERY
        SELECT p FROM generate_series(0, months_ahead) AS n,
             LATERAL routing_log_add_partition(now() + make_interval(months => n)) AS p
        WHERE p IS NOT NULL;
END $$;

SELECT routing_log_add_partition(m AT TIME ZONE 'UTC')
FROM generate_series(
    (SELECT date_trunc('month', min(received_at) AT TIME ZONE 'UTC') FROM routing_log_unpartitioned),
    (SELECT date_trunc('month', max(received_at) AT TIME ZONE 'UTC') FROM routing_log_unpartitioned),
    interval '1 month'
) AS m;

INSERT INTO routing_log (
    id, received_at, chain_id, seq, request_id, forwarded_request_id, correlation_id, from_country_code,
    from_party_id, to_country_code, to_party_id, caller_platform_id, receiver_platform_id, module, interface,
    method, path, query, routing, http_status, ocpi_status_code, duration_ms, error, request_headers,
    response_headers, request_body, request_body_size, response_body, response_body_size, prev_hash, hash, object_id)
SELECT id, received_at, chain_id, seq, request_id, forwarded_request_id, correlation_id, from_country_code,
       from_party_id, to_country_code, to_party_id, caller_platform_id, receiver_platform_id, module, interface,
       method, path, query, routing, http_status, ocpi_status_code, duration_ms, error, request_headers,
       response_headers, request_body, request_body_size, response_body, response_body_size, prev_hash, hash,
       -- the rule of storage.routing_log.object_id_of for the hub's own paths /ocpi/2.2.1/{interface}/{module}/...
       CASE
           WHEN path NOT LIKE '/ocpi/2.2.1/%'
                OR module NOT IN ('cdrs', 'chargingprofiles', 'locations', 'sessions', 'tariffs', 'tokens') THEN NULL
           WHEN interface = 'receiver' AND module <> 'chargingprofiles' THEN nullif(split_part(path, '/', 8), '')
           ELSE nullif(split_part(path, '/', 6), '')
       END
FROM routing_log_unpartitioned;

SELECT setval('routing_log_row_id', coalesce((SELECT max(id) FROM routing_log_unpartitioned), 0) + 1, false);

DROP TABLE routing_log_unpartitioned;

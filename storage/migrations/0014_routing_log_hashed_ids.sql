-- A row's id chosen before the row is hashed, so that its keyed hash covers the id too: auditors cite rows by id
-- (first_bad_id, the console's links), and an id changed or swapped with another row's must show in verify. The
-- writer takes the ids of its next batch from a few the database reserves for it in the same call that appends the
-- batch before (next_ids), so that it costs no round trip of its own; append_routing_log_rows inserts each row with
-- the id it was hashed with, or, for a row chained without one (reserving failed; rows spooled at a stop while the
-- database was away), a new one. A new type and a new function beside 0008/0013's, which stay for an instance of
-- the previous version still writing during a rolling upgrade (its rows are hashed without their ids, as before).
CREATE TYPE routing_log_row AS (
    received_at           timestamptz,
    chain_id              uuid,
    seq                   bigint,
    request_id            text,
    forwarded_request_id  text,
    correlation_id        text,
    from_country_code     text,
    from_party_id         text,
    to_country_code       text,
    to_party_id           text,
    caller_platform_id    bigint,
    receiver_platform_id  bigint,
    module                text,
    interface             text,
    method                text,
    path                  text,
    query                 text,
    routing               text,
    http_status           integer,
    ocpi_status_code      integer,
    duration_ms           float8,
    error                 text,
    request_headers       jsonb,
    response_headers      jsonb,
    request_body          bytea,
    request_body_size     integer,
    response_body         bytea,
    response_body_size    integer,
    prev_hash             bytea,
    hash                  bytea,
    object_id             text,
    listed_ids            text[],
    id                    bigint
);

-- appended: false, and nothing written, when the chain's head shows the batch in already (0008). next_ids: ids_wanted
-- ids for the writer's next batches, taken after the batch's own, so that ids rise along a chain.
CREATE FUNCTION append_routing_log_rows(
    entries routing_log_row[], chain uuid, batch_last_seq bigint, batch_last_hash bytea,
    locations relayed_location_entry[], ids_wanted integer, OUT appended boolean, OUT next_ids bigint[]
) LANGUAGE plpgsql AS $$
DECLARE
    head_seq bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended(chain::text, 0));  -- the first batch of a chain has no head row
    SELECT last_seq INTO head_seq FROM routing_log_chain WHERE chain_id = chain;
    appended := head_seq IS NULL OR head_seq < batch_last_seq;
    IF appended THEN
        INSERT INTO routing_log (
            id, received_at, chain_id, seq, request_id, forwarded_request_id, correlation_id, from_country_code,
            from_party_id, to_country_code, to_party_id, caller_platform_id, receiver_platform_id, module, interface,
            method, path, query, routing, http_status, ocpi_status_code, duration_ms, error, request_headers,
            response_headers, request_body, request_body_size, response_body, response_body_size, prev_hash, hash,
            object_id, listed_ids)
        SELECT coalesce(e.id, nextval('routing_log_row_id')), e.received_at, e.chain_id, e.seq, e.request_id,
            e.forwarded_request_id, e.correlation_id, e.from_country_code, e.from_party_id, e.to_country_code,
            e.to_party_id, e.caller_platform_id, e.receiver_platform_id, e.module, e.interface, e.method, e.path,
            e.query, e.routing, e.http_status, e.ocpi_status_code, e.duration_ms, e.error, e.request_headers,
            e.response_headers, e.request_body, e.request_body_size, e.response_body, e.response_body_size,
            e.prev_hash, e.hash, e.object_id, e.listed_ids
        FROM unnest(entries) WITH ORDINALITY AS e
        ORDER BY e.ordinality;
        INSERT INTO routing_log_chain (chain_id, last_seq, last_hash) VALUES (chain, batch_last_seq, batch_last_hash)
        ON CONFLICT (chain_id) DO UPDATE SET last_seq = excluded.last_seq, last_hash = excluded.last_hash;
        INSERT INTO relayed_location (key, caller_platform_id, receiver_platform_id, from_country_code, from_party_id,
                                      to_country_code, to_party_id, module, url)
        SELECT * FROM unnest(locations);
    END IF;
    next_ids := ARRAY(SELECT nextval('routing_log_row_id') FROM generate_series(1, ids_wanted));
END $$;

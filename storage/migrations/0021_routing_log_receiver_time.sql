-- The receiver's part of a row's duration_ms, so that "was it the hub or the party that was slow?" has an answer:
-- receiver_ms, from sending the request to the party (connecting included) until its whole answer was read, or the
-- exchange failed (routing.forward; hub.party_client for the hub's own calls over the control plane); and
-- connection_wait_ms, how long a forward waited for a connection to the receiver's server it could take
-- (routing.fair_share) before it was sent, 0 when one was free, or in vain (answered 4000, not forwarded). Both null
-- where nothing went to a party (a refusal, an answer of the hub itself, a broadcast's own row) and in rows written
-- before. The hub measured both already (ocpi_hub_forward_duration_seconds, ocpi_hub_connection_wait_seconds).
-- * Covered by the row's keyed hash where a row has either (storage.log_row._keyed_content): a row without them is
--   hashed as before, so rows written before 0021, and by an instance of the previous version, verify as they were.
-- * Rolling: nullable columns (no table is rewritten), and a new type and write function beside 0014's and 0016's,
--   which an instance of the previous version keeps using; its rows have neither time. append_routing_log_timed
--   inserts the rows itself (0014's insert cannot take the new columns) and hands amendments to 0016's function.
ALTER TABLE routing_log ADD COLUMN receiver_ms float8, ADD COLUMN connection_wait_ms float8;
COMMENT ON COLUMN routing_log.receiver_ms IS
    'Of duration_ms, the receiver''s part: from sending the request to the party until its whole answer was read (or '
    'the exchange failed); null where nothing was sent to a party, and in rows written before migration 0021';
COMMENT ON COLUMN routing_log.connection_wait_ms IS
    'How long the request waited for a connection to the receiver''s server it could take before it was sent (0: '
    'none), or in vain (not forwarded); null where nothing was sent to a party, for the hub''s calls over the '
    'control plane (which take no share), and in rows written before migration 0021';

CREATE TYPE routing_log_timed_row AS (
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
    id                    bigint,
    receiver_ms           float8,
    connection_wait_ms    float8
);

-- As 0016's append_routing_log_numbered, with the rows' times: the rows appended as 0014's append_routing_log_rows
-- appends them (appended false, nothing written, when the chain's head shows the batch in already; none: amendments
-- alone), the amendments by 0016's function (no statement for them in nearly every batch, which has none).
CREATE FUNCTION append_routing_log_timed(
    entries routing_log_timed_row[], chain uuid, batch_last_seq bigint, batch_last_hash bytea,
    locations relayed_location_entry[], amendments routing_log_amendment_numbered[], ids_wanted integer,
    OUT appended boolean, OUT next_ids bigint[]
) LANGUAGE plpgsql AS $$
DECLARE
    head_seq bigint;
BEGIN
    appended := false;
    IF cardinality(entries) > 0 THEN
        PERFORM pg_advisory_xact_lock(hashtextextended(chain::text, 0));  -- the first batch of a chain has no head row
        SELECT last_seq INTO head_seq FROM routing_log_chain WHERE chain_id = chain;
        appended := head_seq IS NULL OR head_seq < batch_last_seq;
    END IF;
    IF appended THEN
        INSERT INTO routing_log (
            id, received_at, chain_id, seq, request_id, forwarded_request_id, correlation_id, from_country_code,
            from_party_id, to_country_code, to_party_id, caller_platform_id, receiver_platform_id, module, interface,
            method, path, query, routing, http_status, ocpi_status_code, duration_ms, error, request_headers,
            response_headers, request_body, request_body_size, response_body, response_body_size, prev_hash, hash,
            object_id, listed_ids, receiver_ms, connection_wait_ms)
        SELECT coalesce(e.id, nextval('routing_log_row_id')), e.received_at, e.chain_id, e.seq, e.request_id,
            e.forwarded_request_id, e.correlation_id, e.from_country_code, e.from_party_id, e.to_country_code,
            e.to_party_id, e.caller_platform_id, e.receiver_platform_id, e.module, e.interface, e.method, e.path,
            e.query, e.routing, e.http_status, e.ocpi_status_code, e.duration_ms, e.error, e.request_headers,
            e.response_headers, e.request_body, e.request_body_size, e.response_body, e.response_body_size,
            e.prev_hash, e.hash, e.object_id, e.listed_ids, e.receiver_ms, e.connection_wait_ms
        FROM unnest(entries) WITH ORDINALITY AS e
        ORDER BY e.ordinality;
        INSERT INTO routing_log_chain (chain_id, last_seq, last_hash) VALUES (chain, batch_last_seq, batch_last_hash)
        ON CONFLICT (chain_id) DO UPDATE SET last_seq = excluded.last_seq, last_hash = excluded.last_hash;
        INSERT INTO relayed_location (key, caller_platform_id, receiver_platform_id, from_country_code, from_party_id,
                                      to_country_code, to_party_id, module, url)
        SELECT * FROM unnest(locations);
    END IF;
    next_ids := ARRAY(SELECT nextval('routing_log_row_id') FROM generate_series(1, ids_wanted));
    IF cardinality(amendments) > 0 THEN
        PERFORM append_routing_log_numbered('{}'::routing_log_row[], chain, NULL, NULL,
                                            '{}'::relayed_location_entry[], amendments, 0);
    END IF;
END $$;

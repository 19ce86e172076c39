-- One batch of the group commit, appended only if it extends its chain: the rows, the chain's new head and the CDR
-- Locations rewritten in this batch, in one call (one round trip). A writer that gave up on a write (the server
-- stopped answering) retries it on a new connection while the first statement may still run once the server goes
-- on; the chain's head, read under a lock per chain, tells whether the batch is in already. Returns false then,
-- and writes nothing. routing_log holds no unique (chain_id, seq) since it is partitioned by received_at.
CREATE FUNCTION append_routing_log(
    entries routing_log_entry[], chain uuid, batch_last_seq bigint, batch_last_hash bytea,
    locations relayed_location_entry[]
) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    head_seq bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended(chain::text, 0));  -- the first batch of a chain has no head row
    SELECT last_seq INTO head_seq FROM routing_log_chain WHERE chain_id = chain;
    IF head_seq >= batch_last_seq THEN
        RETURN false;
    END IF;
    INSERT INTO routing_log (
        received_at, chain_id, seq, request_id, forwarded_request_id, correlation_id, from_country_code,
        from_party_id, to_country_code, to_party_id, caller_platform_id, receiver_platform_id, module, interface,
        method, path, query, routing, http_status, ocpi_status_code, duration_ms, error, request_headers,
        response_headers, request_body, request_body_size, response_body, response_body_size, prev_hash, hash,
        object_id)
    SELECT * FROM unnest(entries);
    INSERT INTO routing_log_chain (chain_id, last_seq, last_hash) VALUES (chain, batch_last_seq, batch_last_hash)
    ON CONFLICT (chain_id) DO UPDATE SET last_seq = excluded.last_seq, last_hash = excluded.last_hash;
    INSERT INTO relayed_location (key, caller_platform_id, receiver_platform_id, from_country_code, from_party_id,
                                  to_country_code, to_party_id, module, url)
    SELECT * FROM unnest(locations);
    RETURN true;
END $$;

-- The ids a Sender's list answer names (GET of cdrs, sessions, tokens, tariffs), so that an auditor finds the rows
-- of a pull as the rows of a push are found by object_id: "did the eMSP ever get CDR X?" whichever way it came.
-- Kept like object_id (upper-cased CiStrings) and covered by the row's keyed hash. A GIN index over the rows that
-- have them; building it reads the whole log once (the hub is stopped for this release: deploy/README.md). Without
-- fastupdate: its pending list, merged by whichever insert finds it full, held a group commit up to 250 ms (1,000
-- ids a row); inserted as they come, a row's ids cost the commit it is in a few ms at most.
ALTER TABLE routing_log ADD COLUMN listed_ids text[];
COMMENT ON COLUMN routing_log.listed_ids IS
    'The ids (id, or uid for tokens) of the objects a GET list answer of cdrs, sessions, tokens or tariffs named';
CREATE INDEX routing_log_listed ON routing_log USING gin (listed_ids) WITH (fastupdate = off)
WHERE listed_ids IS NOT NULL;

ALTER TYPE routing_log_entry ADD ATTRIBUTE listed_ids text[];

CREATE OR REPLACE FUNCTION append_routing_log(
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
        object_id, listed_ids)
    SELECT * FROM unnest(entries);
    INSERT INTO routing_log_chain (chain_id, last_seq, last_hash) VALUES (chain, batch_last_seq, batch_last_hash)
    ON CONFLICT (chain_id) DO UPDATE SET last_seq = excluded.last_seq, last_hash = excluded.last_hash;
    INSERT INTO relayed_location (key, caller_platform_id, receiver_platform_id, from_country_code, from_party_id,
                                  to_country_code, to_party_id, module, url)
    SELECT * FROM unnest(locations);
    RETURN true;
END $$;

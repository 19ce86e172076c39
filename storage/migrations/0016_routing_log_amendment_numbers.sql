-- Amendments numbered along their chain, so that one deleted shows. 0015's MAC ties an amendment to its row, but
-- nothing in a row says it was amended: a deleted amendment left no trace. Now the writer numbers each amendment of
-- its chain 1, 2, 3, ... once, when it first writes it (a retry sends the same number), with number_mac, a MAC under
-- the chain's key over the chain, the number and the amended row's seq (storage.log_row.amendment_number_mac); the
-- chain's head keeps the highest number written (routing_log_chain.amendments), so verify finds a number missing.
-- * Retention deletes amendments with their rows: the trigger below keeps each deleted numbered amendment's number,
--   row seq and number_mac in routing_log_amendment_dropped, whoever deletes it (a retention of 0015's version
--   too, during a rolling upgrade), so that verify takes a missing number for retention's only when that record
--   verifies and its row is gone; one deleted from a row still there names that row. Disabling the trigger (or
--   TRUNCATE, which it does not see) leaves the number missing with no record: reported. The records stay (a few
--   dozen bytes per amendment, and amendments are rare).
-- * Rolling: 0015's mac stays as it was, so the previous version's verify passes on new amendments, and its writer
--   goes on writing unnumbered amendments of its own chains through 0015's append_routing_log_batch, left as it was
--   (its 8-field records). The new version writes through append_routing_log_numbered, beside it.
ALTER TABLE routing_log_amendment ADD COLUMN number bigint, ADD COLUMN number_mac bytea;
COMMENT ON COLUMN routing_log_amendment.number IS
    'The amendment''s number along its chain (1, 2, ...), MAC''d with its row''s seq in number_mac; null before 0016';
ALTER TABLE routing_log_chain ADD COLUMN amendments bigint;
COMMENT ON COLUMN routing_log_chain.amendments IS 'The highest number of an amendment written in the chain (0016)';

CREATE TABLE routing_log_amendment_dropped (
    chain_id    uuid NOT NULL,
    number      bigint NOT NULL,
    seq         bigint NOT NULL,
    number_mac  bytea,
    dropped_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (chain_id, number)
);
COMMENT ON TABLE routing_log_amendment_dropped IS
    'Each numbered amendment deleted (by retention, with its row), as the trigger on routing_log_amendment saw it';

CREATE FUNCTION record_dropped_amendments() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO routing_log_amendment_dropped (chain_id, number, seq, number_mac)
    SELECT chain_id, number, seq, number_mac FROM dropped WHERE number IS NOT NULL
    ON CONFLICT (chain_id, number) DO NOTHING;
    RETURN NULL;
END $$;
CREATE TRIGGER routing_log_amendment_dropped AFTER DELETE ON routing_log_amendment
    REFERENCING OLD TABLE AS dropped FOR EACH STATEMENT EXECUTE FUNCTION record_dropped_amendments();

CREATE TYPE routing_log_amendment_numbered AS (
    chain_id          uuid,
    seq               bigint,
    row_received_at   timestamptz,
    http_status       integer,
    ocpi_status_code  integer,
    message           text,
    answered_at       timestamptz,
    mac               bytea,
    number            bigint,  -- null: an amendment spooled by the previous version
    number_mac        bytea
);

-- As 0015's append_routing_log_batch, which it calls for the rows, with numbered amendments: each chain's head keeps
-- the highest number written.
CREATE FUNCTION append_routing_log_numbered(
    entries routing_log_row[], chain uuid, batch_last_seq bigint, batch_last_hash bytea,
    locations relayed_location_entry[], amendments routing_log_amendment_numbered[], ids_wanted integer,
    OUT appended boolean, OUT next_ids bigint[]
) LANGUAGE plpgsql AS $$
BEGIN
    SELECT a.appended, a.next_ids INTO appended, next_ids
    FROM append_routing_log_batch(entries, chain, batch_last_seq, batch_last_hash, locations,
                                  '{}'::routing_log_amendment_entry[], ids_wanted) AS a;
    IF cardinality(amendments) > 0 THEN  -- nearly every batch has none: no statement for them
        INSERT INTO routing_log_amendment (chain_id, seq, row_received_at, http_status, ocpi_status_code, message,
                                           answered_at, mac, number, number_mac)
        SELECT * FROM unnest(amendments)
        ON CONFLICT (chain_id, seq) DO NOTHING;
        UPDATE routing_log_chain AS c SET amendments = greatest(c.amendments, n.highest)
        FROM (SELECT a.chain_id, max(a.number) AS highest FROM unnest(amendments) AS a GROUP BY a.chain_id) AS n
        WHERE c.chain_id = n.chain_id AND n.highest IS NOT NULL;
    END IF;
END $$;

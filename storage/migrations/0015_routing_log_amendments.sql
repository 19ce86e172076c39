-- What a caller was answered instead of what its routing-log row says. In strict mode a row is committed before its
-- caller is answered; when the commit does not finish in time the caller gets OCPI 4000 (hub.ocpi.relay). A row
-- still queued then is rewritten to say so, but a row already chained (in the batch being committed, its content
-- fixed by its hash) is committed later as it was, 1000 and the receiver's answer. Its amendment says what the caller
-- got instead: written by the writer with a later batch (or alone), MAC'd under the chain's key over the amended
-- row's place (chain, seq) and hash (which covers the row's id) and the amendment's content
-- (storage.log_row.amendment_mac), checked by verify.
-- * No foreign key: routing_log is partitioned, and one would stop retention's DROP of a partition. row_received_at
--   is the amended row's received_at: retention deletes the amendments of the rows it dropped in the same
--   transaction (storage.partitions), and those a hub of the previous version's retention left behind with them.
-- * Rolling: a new function beside 0014's append_routing_log_rows, which it calls, and which an instance of the
--   previous version keeps using meanwhile; that version neither writes nor reads amendments.
CREATE TABLE routing_log_amendment (
    chain_id          uuid NOT NULL,
    seq               bigint NOT NULL,
    row_received_at   timestamptz NOT NULL,
    http_status       integer NOT NULL,
    ocpi_status_code  integer,
    message           text NOT NULL,
    answered_at       timestamptz NOT NULL,
    mac               bytea NOT NULL,
    PRIMARY KEY (chain_id, seq)
);
COMMENT ON TABLE routing_log_amendment IS
    'What the caller of a routing-log row (chain_id, seq) was answered instead of what the row says, MAC''d';
CREATE INDEX routing_log_amendment_received ON routing_log_amendment (row_received_at);

CREATE TYPE routing_log_amendment_entry AS (
    chain_id          uuid,
    seq               bigint,
    row_received_at   timestamptz,
    http_status       integer,
    ocpi_status_code  integer,
    message           text,
    answered_at       timestamptz,
    mac               bytea
);

-- A batch of rows as append_routing_log_rows appends it (none: amendments alone), and amendments of rows committed
-- before: written whatever the head says (a batch committed as its answer was lost is sent again with them), once.
CREATE FUNCTION append_routing_log_batch(
    entries routing_log_row[], chain uuid, batch_last_seq bigint, batch_last_hash bytea,
    locations relayed_location_entry[], amendments routing_log_amendment_entry[], ids_wanted integer,
    OUT appended boolean, OUT next_ids bigint[]
) LANGUAGE plpgsql AS $$
BEGIN
    IF cardinality(entries) > 0 THEN
        SELECT a.appended, a.next_ids INTO appended, next_ids
        FROM append_routing_log_rows(entries, chain, batch_last_seq, batch_last_hash, locations, ids_wanted) AS a;
    ELSE
        appended := false;
        next_ids := ARRAY(SELECT nextval('routing_log_row_id') FROM generate_series(1, ids_wanted));
    END IF;
    IF cardinality(amendments) > 0 THEN  -- nearly every batch has none: no statement for them
        INSERT INTO routing_log_amendment (chain_id, seq, row_received_at, http_status, ocpi_status_code, message,
                                           answered_at, mac)
        SELECT * FROM unnest(amendments)
        ON CONFLICT (chain_id, seq) DO NOTHING;
    END IF;
END $$;

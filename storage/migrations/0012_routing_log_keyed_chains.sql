-- Keyed hash chains. From now on a routing-log row's hash is an HMAC-SHA-256 under a key derived from
-- OCPI_HUB_SECRET_KEY and covers its object_id (storage.log_row.row_hash): someone who can write to the database
-- but does not hold the key can no longer change a row and recompute the chain after it.
-- * routing_log_sealed_chain: every chain written before (plain SHA-256) with its last row, MAC'd by the migration's
--   Python half (storage.migrate) in this transaction. Such a chain verifies with the old hash as long as it still
--   ends at that row: a changed row would change every hash after it, up to the sealed one.
-- * routing_log_floor.mac: the MAC of each retention floor (the hash of a dropped row that the next row continues
--   from), so that a floor written by anything but retention cannot hide rows deleted from a chain. Retention now
--   also keeps a floor of a dropped row whose predecessor was not dropped with it, and each floor says which of its
--   neighbours were not dropped with it (next_apart, prev_apart) and keeps the row's prev_hash, which pins the row
--   before it: verify then knows which rows of a gap retention dropped, and which must still be there. Floors from
--   before the upgrade have none of these, and are MAC'd as they are.
CREATE TABLE routing_log_sealed_chain (
    chain_id    uuid PRIMARY KEY,
    last_seq    bigint NOT NULL,
    last_hash   bytea NOT NULL,
    mac         bytea NOT NULL,
    sealed_at   timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE routing_log_sealed_chain IS
    'The chains written before keyed hashes, each with its last row when the hub was upgraded, MAC''d';

ALTER TABLE routing_log_floor ADD COLUMN mac bytea, ADD COLUMN prev_hash bytea, ADD COLUMN next_apart boolean,
    ADD COLUMN prev_apart boolean;
COMMENT ON COLUMN routing_log_floor.mac IS 'HMAC-SHA-256 of the floor under the routing log''s key';

-- The audit trail becomes tamper-evident (storage.audit_trail): each entry written from now on carries prev_hash and
-- hash, an HMAC-SHA-256 under a key derived from OCPI_HUB_SECRET_KEY over its id, its content and prev_hash, the hash
-- of the entry chained before it. One chain for the whole trail: a hub process chains an entry under the lock of
-- audit_trail_head (SELECT ... FOR UPDATE), which holds the chain's last entry, MAC'd, so that entries deleted from the
-- end show too. Entries written before (id up to unchained_upto) have no hash: verify counts them as unchained. The
-- head's first MAC is the migration's Python half (storage.migrate): unchained_upto cannot be moved later without the
-- key.
ALTER TABLE audit_trail ADD COLUMN prev_hash bytea, ADD COLUMN hash bytea;

CREATE TABLE audit_trail_head (
    only_row        boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    unchained_upto  bigint NOT NULL,
    last_id         bigint,
    last_hash       bytea NOT NULL,
    mac             bytea
);
COMMENT ON TABLE audit_trail_head IS
    'The audit trail''s chain: its last entry (none yet: last_id NULL), the entries before it began, MAC''d';

INSERT INTO audit_trail_head (unchained_upto, last_hash)
SELECT coalesce(max(id), 0), decode(repeat('00', 32), 'hex') FROM audit_trail;

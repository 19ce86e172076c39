-- Which secret key the database was set up with (storage.secret_key_check): a check value, an HMAC of a fixed label
-- under a key derived from OCPI_HUB_SECRET_KEY (storage.secrets.key_check_value), never the key nor anything it can be
-- found from. Until a party registers, no stored token tells a wrong key (storage.migrate.check_secret_key), and a hub
-- with one would key its routing-log rows and audit-trail entries so that no other instance's key verifies them. The
-- first command after this migration to run with a key records its check value; every later one compares and is
-- refused with another key. One row, written once: no UPDATE, and the serving role may only read it.
CREATE TABLE secret_key_check (
    only_row     boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    value        bytea NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE secret_key_check IS
    'The check value of the secret key the hub''s data is keyed with (never the key): a start with another is refused';

-- Legal holds on routing-log rows under dispute: while a hold is in force, retention drops no partition holding a row
-- it covers (storage.partitions; the partition's other rows are kept with it). A hold covers the rows of one
-- X-Correlation-ID, the rows about one object (location, session, CDR, token or tariff id, as routing_log.object_id),
-- or the rows a party sent or received in [since, until) (party codes upper case, as party_role holds them). An
-- admin or an auditor sets one, only an admin releases one (hub/admin/holds.py); a released hold stays, saying who
-- released it and when, and the audit trail records both actions.
CREATE TABLE routing_log_hold (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    correlation_id  text,
    object_id       text,
    country_code    text,
    party_id        text,
    since           timestamptz,
    until           timestamptz,
    reason          text NOT NULL,
    set_by          text NOT NULL,
    set_at          timestamptz NOT NULL DEFAULT now(),
    released_by     text,
    released_at     timestamptz,
    CHECK (num_nonnulls(correlation_id, object_id, party_id) = 1),
    CHECK ((party_id IS NULL) = (country_code IS NULL) AND (party_id IS NULL) = (since IS NULL)
           AND (party_id IS NULL) = (until IS NULL) AND since < until),
    CHECK ((released_by IS NULL) = (released_at IS NULL))
);
COMMENT ON TABLE routing_log_hold IS
    'Legal holds: retention drops no routing-log partition holding a row a hold in force (released_at NULL) covers';

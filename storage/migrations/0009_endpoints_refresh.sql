-- A rotation the party took but the hub could not finish (hub/admin/credentials.py, TakenButFailed) leaves the
-- party's new token B and versions URL beside the endpoints and version fetched before. The hub fetches them again
-- until that works (hub/admin/endpoints.py): endpoints_refresh_due is when it tries next (NULL: nothing pending),
-- endpoints_refresh_failures how many tries failed (its backoff), endpoints_refresh_error why the last one failed.
ALTER TABLE platform
    ADD COLUMN endpoints_refresh_due timestamptz,
    ADD COLUMN endpoints_refresh_failures integer NOT NULL DEFAULT 0,
    ADD COLUMN endpoints_refresh_error text;

CREATE INDEX platform_endpoints_refresh_due ON platform (endpoints_refresh_due)
    WHERE endpoints_refresh_due IS NOT NULL;

-- The hub itself is an actor of the audit trail: the endpoints it fetched again on its own.
ALTER TABLE audit_trail DROP CONSTRAINT audit_trail_actor_kind_check,
    ADD CONSTRAINT audit_trail_actor_kind_check CHECK (actor_kind IN ('admin', 'auditor', 'hub'));

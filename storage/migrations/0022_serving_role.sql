-- A role that serves the hub without owning its tables (storage/serving_role.py, `ocpi-hub grant-serving-role`): it
-- appends to the routing log, its amendments and the audit trail, and can neither change nor delete what they hold,
-- nor run DDL. Migrations and retention (which drops whole partitions, and only an owner may) run as the owner.
-- * The hub creates the coming months' partitions at start and daily (storage.partitions), which takes the owner too:
--   a partition created by the serving role would be its own to truncate or drop. So the function doing it runs as
--   its owner (SECURITY DEFINER), with a search_path of its own schema alone, callable only by whom the owner grants
--   it to (grant-serving-role does): it creates this month's partition and the next ones, at most 120 months ahead,
--   nothing else. Kept by the hub rather than left to a job run as the owner: with that job late or not scheduled,
--   rows would pile up in the default partition, which retention never drops.
-- * A legal hold is only ever released, once: the serving role may write released_by and released_at (the admin API
--   releases holds), and the trigger below refuses any other change of a hold, from any role.
-- * Rolling: an instance of the previous version calls the same function as before, as the owner it connects as.
CREATE OR REPLACE FUNCTION routing_log_ensure_partitions(months_ahead integer) RETURNS SETOF text LANGUAGE plpgsql
SECURITY DEFINER AS $$
BEGIN
    IF months_ahead IS NULL OR months_ahead NOT BETWEEN 0 AND 120 THEN
        RAISE EXCEPTION 'routing-log partitions are created 0 to 120 months ahead, not %', months_ahead
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM pg_advisory_xact_lock(210848524);  -- 0x0C914B0C, as in storage/partitions.py
    RETURN QUERY
        SELECT p FROM generate_series(0, months_ahead) AS n,
             LATERAL routing_log_add_partition(now() + make_interval(months => n)) AS p
        WHERE p IS NOT NULL;
END $$;
DO $$ BEGIN
    -- the hub's schema first (partitions are created there; pg_catalog is searched before it, unnamed), pg_temp last:
    -- no temporary table of the caller's stands in for one of the hub's
    EXECUTE format('ALTER FUNCTION routing_log_ensure_partitions(integer) SET search_path = %I, pg_temp',
                   current_schema());
END $$;
REVOKE EXECUTE ON FUNCTION routing_log_ensure_partitions(integer) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION routing_log_add_partition(timestamptz) FROM PUBLIC;

CREATE FUNCTION routing_log_hold_released_once() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.released_at IS NOT NULL OR NEW.released_at IS NULL OR NEW.released_by IS NULL
       OR (NEW.id, NEW.correlation_id, NEW.object_id, NEW.country_code, NEW.party_id, NEW.since, NEW.until, NEW.reason,
           NEW.set_by, NEW.set_at)
          IS DISTINCT FROM (OLD.id, OLD.correlation_id, OLD.object_id, OLD.country_code, OLD.party_id, OLD.since,
                            OLD.until, OLD.reason, OLD.set_by, OLD.set_at) THEN
        RAISE EXCEPTION 'legal hold % is only ever released, once: it is not changed otherwise', OLD.id
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER routing_log_hold_released_once BEFORE UPDATE ON routing_log_hold
    FOR EACH ROW EXECUTE FUNCTION routing_log_hold_released_once();

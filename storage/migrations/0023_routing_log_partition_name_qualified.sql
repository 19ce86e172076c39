-- A partition is looked for in the hub's schema only. routing_log_ensure_partitions runs with the search_path "the
-- hub's schema, pg_temp" (0022), and routing_log_add_partition looked its name up unqualified: a temporary table of
-- that name in the caller's session was taken for the partition, which was then not made (a serving role may create
-- temporary tables). current_schema() is the first schema of the search_path: the hub's, where CREATE TABLE %I makes
-- it. Rolling: the function keeps its name, owner and grants; the previous version calls it as before.
CREATE OR REPLACE FUNCTION routing_log_add_partition(month timestamptz) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    lo timestamptz := date_trunc('month', month AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    hi timestamptz := (date_trunc('month', month AT TIME ZONE 'UTC') + interval '1 month') AT TIME ZONE 'UTC';
    name text := 'routing_log_' || to_char(month AT TIME ZONE 'UTC', 'YYYY"m"MM');
BEGIN
    IF to_regclass(format('%I.%I', current_schema(), name)) IS NOT NULL THEN
        RETURN NULL;
    END IF;
    -- No row of that month may reach the default partition between the move and the attach.
    LOCK TABLE routing_log_default IN ACCESS EXCLUSIVE MODE;
    EXECUTE format('CREATE TABLE %I.%I (LIKE routing_log INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                   current_schema(), name);
    EXECUTE format('WITH moved AS (DELETE FROM routing_log_default WHERE received_at >= %L AND received_at < %L'
                   ' RETURNING *) INSERT INTO %I.%I SELECT * FROM moved', lo, hi, current_schema(), name);
    EXECUTE format('ALTER TABLE routing_log ATTACH PARTITION %I.%I FOR VALUES FROM (%L) TO (%L)',
                   current_schema(), name, lo, hi);
    RETURN name;
END $$;

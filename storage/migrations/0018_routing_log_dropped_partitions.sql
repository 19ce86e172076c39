-- What retention dropped of the routing log, partition by partition: the months and the range of row ids each held,
-- and when it was dropped (storage.partitions), so that a row asked for by its id afterwards is answered as dropped
-- by retention, not as one the log never had. Row ids rise with the order of writing (storage.log_ids), so a month's
-- ids form one range; first_id and last_id are NULL for a partition that held no row.
CREATE TABLE routing_log_dropped_partition (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    partition        text NOT NULL,
    received_from    timestamptz NOT NULL,
    received_before  timestamptz NOT NULL,
    first_id         bigint,
    last_id          bigint,
    dropped_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX routing_log_dropped_partition_ids ON routing_log_dropped_partition (first_id, last_id);

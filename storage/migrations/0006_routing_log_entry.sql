-- One routing-log row as the writer sends it, and one rewritten CDR Location: the group commit passes a batch as
-- one array of each, instead of one array per column (31 + 9 parameters). asyncpg's cost is mostly per parameter:
-- in isolation 377k fewer instructions per 1-row batch and 1.03M fewer per 8-row batch, and in the hub
-- (bench.instructions) 8.5% fewer per routed request at concurrency 1 and 10% fewer at 8, while PostgreSQL's CPU
-- per batch stayed the same or fell. The attribute order is the writer's record order: storage.routing_log.COLUMNS,
-- then object_id.
CREATE TYPE routing_log_entry AS (
    received_at           timestamptz,
    chain_id              uuid,
    seq                   bigint,
    request_id            text,
    forwarded_request_id  text,
    correlation_id        text,
    from_country_code     text,
    from_party_id         text,
    to_country_code       text,
    to_party_id           text,
    caller_platform_id    bigint,
    receiver_platform_id  bigint,
    module                text,
    interface             text,
    method                text,
    path                  text,
    query                 text,
    routing               text,
    http_status           integer,
    ocpi_status_code      integer,
    duration_ms           float8,
    error                 text,
    request_headers       jsonb,
    response_headers      jsonb,
    request_body          bytea,
    request_body_size     integer,
    response_body         bytea,
    response_body_size    integer,
    prev_hash             bytea,
    hash                  bytea,
    object_id             text
);

CREATE TYPE relayed_location_entry AS (
    key                   text,
    caller_platform_id    bigint,
    receiver_platform_id  bigint,
    from_country_code     text,
    from_party_id         text,
    to_country_code       text,
    to_party_id           text,
    module                text,
    url                   text
);

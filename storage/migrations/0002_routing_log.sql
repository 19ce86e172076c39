-- The routing log: one row per functional request the hub received, and one per message it sent on its own.
-- Each hub process writes its own hash chain (chain_id, seq); routing_log_chain holds each chain's head, so an
-- edited, inserted or deleted row (the last ones included) is detectable.

CREATE TABLE routing_log (
    id                     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_at            timestamptz NOT NULL,
    chain_id               uuid NOT NULL,
    seq                    bigint NOT NULL,
    request_id             text NOT NULL,
    forwarded_request_id   text,
    correlation_id         text NOT NULL,
    from_country_code      text,
    from_party_id          text,
    to_country_code        text,
    to_party_id            text,
    caller_platform_id     bigint,
    receiver_platform_id   bigint,
    module                 text NOT NULL,
    interface              text,
    method                 text NOT NULL,
    path                   text NOT NULL,
    query                  text NOT NULL DEFAULT '',
    routing                text NOT NULL CHECK (routing IN ('direct', 'broadcast', 'open', 'hub', 'rejected')),
    http_status            integer NOT NULL,
    ocpi_status_code       integer,
    duration_ms            double precision NOT NULL,
    error                  text,
    request_headers        jsonb,
    response_headers       jsonb,
    -- zlib-compressed bodies, cut at the configured cap (the *_size columns keep the size as received)
    request_body           bytea,
    request_body_size      integer NOT NULL DEFAULT 0,
    response_body          bytea,
    response_body_size     integer NOT NULL DEFAULT 0,
    prev_hash              bytea NOT NULL,
    hash                   bytea NOT NULL,
    UNIQUE (chain_id, seq)
);

CREATE INDEX routing_log_request_id ON routing_log (request_id);
CREATE INDEX routing_log_correlation_id ON routing_log (correlation_id, received_at);
CREATE INDEX routing_log_received_at ON routing_log (received_at);

CREATE TABLE routing_log_chain (
    chain_id    uuid PRIMARY KEY,
    started_at  timestamptz NOT NULL DEFAULT now(),
    last_seq    bigint NOT NULL,
    last_hash   bytea NOT NULL
);

-- The Location of a relayed CDR POST, rewritten to a hub URL (mod_cdrs.asciidoc: the CPO GETs it later).
CREATE TABLE relayed_location (
    key                   text PRIMARY KEY,
    caller_platform_id    bigint NOT NULL,
    receiver_platform_id  bigint NOT NULL,
    from_country_code     text NOT NULL,
    from_party_id         text NOT NULL,
    to_country_code       text NOT NULL,
    to_party_id           text NOT NULL,
    module                text NOT NULL,
    url                   text NOT NULL,
    created_at            timestamptz NOT NULL DEFAULT now()
);

-- Auditors: read-only bearer tokens for the routing log, the party list, stats and verify (issue 6), stored as
-- SHA-256 like every token the hub only has to recognise. audit_trail records every action taken on the routing
-- log through the admin API, by the admin or an auditor, so reading the log leaves a trace of its own.

CREATE TABLE auditor (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 100),
    token_hash  bytea NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE audit_trail (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    actor_kind  text NOT NULL CHECK (actor_kind IN ('admin', 'auditor')),
    actor_name  text NOT NULL,
    action      text NOT NULL,
    parameters  jsonb NOT NULL DEFAULT '{}'
);

CREATE INDEX audit_trail_actor ON audit_trail (actor_name, id);

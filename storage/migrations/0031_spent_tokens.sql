-- The tokens a credentials exchange replaced (credentials.asciidoc: token A is spent by the registration, a token C by
-- an update of the credentials, the party's or the operator's rotation), as SHA-256 with when: a call with one is told
-- so, and with which token to call instead, rather than "unknown" (hub.auth.why_unknown). The last one per platform and
-- kind, so a party updating its credentials in a loop grows it by nothing.
CREATE TABLE spent_token (
    platform_id  bigint NOT NULL REFERENCES platform (id),
    kind         text NOT NULL CHECK (kind IN ('A', 'C')),
    token_hash   bytea NOT NULL,
    spent_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (platform_id, kind)
);

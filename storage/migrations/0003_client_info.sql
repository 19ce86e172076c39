-- ClientInfo changes waiting to be pushed to the connected parties (mod_hub_client_info.asciidoc, Push model).
-- A change is written in the same transaction as the role's new status, and delivered once, by whichever hub
-- process takes it first (FOR UPDATE SKIP LOCKED), so a change made by the CLI is pushed too.

CREATE TABLE client_info_push (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    platform_id   bigint NOT NULL REFERENCES platform (id),  -- holds the role; not pushed to
    role          text NOT NULL,
    country_code  text NOT NULL,
    party_id      text NOT NULL,
    status        text NOT NULL CHECK (status IN ('CONNECTED', 'OFFLINE', 'PLANNED', 'SUSPENDED')),
    last_updated  timestamptz NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    delivered_at  timestamptz
);

CREATE INDEX client_info_push_pending ON client_info_push (id) WHERE delivered_at IS NULL;
CREATE INDEX party_role_status_changed ON party_role (status_changed_at, id);

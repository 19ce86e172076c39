-- Platforms (one per OCPI connection), the party roles they hold, their endpoints and credentials tokens.

CREATE TABLE platform (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name             text NOT NULL,
    -- INVITED: token A handed out; REGISTERED: credentials exchanged; UNREGISTERED: DELETE received or sent.
    state            text NOT NULL DEFAULT 'INVITED' CHECK (state IN ('INVITED', 'REGISTERED', 'UNREGISTERED')),
    versions_url     text,
    version          text,
    version_url      text,
    -- token B (the hub calls the party with it), Fernet-encrypted with the hub's secret key
    token_b          bytea,
    -- 'base64' per OCPI 2.2.1; 'raw' for 2.1.1-era parties that do not decode the header
    token_encoding   text NOT NULL DEFAULT 'base64' CHECK (token_encoding IN ('base64', 'raw')),
    created_at       timestamptz NOT NULL DEFAULT now(),
    registered_at    timestamptz,
    unregistered_at  timestamptz,
    last_seen        timestamptz
);

CREATE TABLE party_role (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    platform_id       bigint NOT NULL REFERENCES platform (id),
    role              text NOT NULL CHECK (role IN ('CPO', 'EMSP', 'HUB', 'NAP', 'NSP', 'OTHER', 'SCSP')),
    country_code      text NOT NULL CHECK (country_code ~ '^[A-Za-z]{2}$'),
    party_id          text NOT NULL CHECK (party_id ~ '^[A-Za-z0-9]{3}$'),
    business_details  jsonb,
    -- ConnectionStatus of mod_hub_client_info plus UNREGISTERED for roles whose platform left the hub
    status            text NOT NULL DEFAULT 'PLANNED'
                      CHECK (status IN ('CONNECTED', 'OFFLINE', 'PLANNED', 'SUSPENDED', 'UNREGISTERED')),
    status_changed_at timestamptz NOT NULL DEFAULT now()
);

-- credentials.asciidoc: "Every role needs a unique combination of: role, party_id and country_code" (CiString).
CREATE UNIQUE INDEX party_role_held ON party_role (role, upper(country_code), upper(party_id))
    WHERE status <> 'UNREGISTERED';
CREATE INDEX party_role_platform ON party_role (platform_id);

CREATE TABLE platform_endpoint (
    platform_id     bigint NOT NULL REFERENCES platform (id) ON DELETE CASCADE,
    identifier      text NOT NULL,
    interface_role  text NOT NULL CHECK (interface_role IN ('SENDER', 'RECEIVER')),
    url             text NOT NULL,
    PRIMARY KEY (platform_id, identifier, interface_role)
);

-- Tokens the hub only has to recognise (A: invitation, C: issued at registration), stored as SHA-256.
CREATE TABLE credentials_token (
    token_hash   bytea PRIMARY KEY,
    platform_id  bigint NOT NULL REFERENCES platform (id),
    kind         text NOT NULL CHECK (kind IN ('A', 'C')),
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX credentials_token_platform ON credentials_token (platform_id);

-- The roles (party_role ids) a platform refused the ClientInfo of (hub.client_info: answered with anything but HTTP 2xx
-- and an OCPI 1xxx status), oldest refusal first: each round pushes it them again, as they are then, after its other
-- pushes, until it takes them. Kept apart from client_info_missed_since and its catch-up, which goes by role id: a role
-- refused there would hold back every role after it.
ALTER TABLE platform ADD COLUMN client_info_refused bigint[] NOT NULL DEFAULT '{}';

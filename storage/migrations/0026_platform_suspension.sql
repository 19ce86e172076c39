-- Suspension (`ocpi-hub parties suspend`, POST /admin/api/parties/{id}/suspend): the operator stops a registered
-- platform for a while without taking it off the hub. Its tokens are refused and nothing is routed to it until it is
-- resumed; its roles go OFFLINE for the other parties (mod_hub_client_info.asciidoc, OFFLINE: "no requests should be
-- sent to this party"; SUSPENDED there means a party that "will never connect anymore", which is removal's).
-- suspended_reason is the operator's, and is told to the platform when its requests are refused.
ALTER TABLE platform DROP CONSTRAINT platform_state_check;
ALTER TABLE platform ADD CONSTRAINT platform_state_check
    CHECK (state IN ('INVITED', 'REGISTERED', 'SUSPENDED', 'UNREGISTERED'));
ALTER TABLE platform ADD COLUMN suspended_at timestamptz, ADD COLUMN suspended_reason text;

-- A platform back from a suspension is pushed the ClientInfo it missed (hub.client_info; mod_hub_client_info.asciidoc,
-- Push model): while suspended, and until its roles are CONNECTED again, it gets none of the pushes of the other
-- parties' changes. client_info_missed_since: from when it missed them (set when it is suspended); once it is connected
-- again, the hub pushes it, as they are now, the other platforms' roles whose status changed since then, by role id in
-- batches, client_info_missed_after the last role pushed; both NULL once it is up to date.
ALTER TABLE platform ADD COLUMN client_info_missed_since timestamptz, ADD COLUMN client_info_missed_after bigint;
UPDATE platform SET client_info_missed_since = suspended_at WHERE state = 'SUSPENDED';

-- A platform being caught up on the ClientInfo it missed (migrations 0027, 0028) is pushed every change again from the
-- first round of its catch-up on: client_info_catch_up_from, when that round began (NULL until then, and again each
-- time client_info_missed_since is set anew). A role whose newest change was delivered since then, or is still to be,
-- reaches it as every change does, and its batch of the catch-up leaves it out (storage/queries.sql,
-- client_infos_missed): pushed once, not a second time with the same status, nor with an older status after its newer.
ALTER TABLE platform ADD COLUMN client_info_catch_up_from timestamptz;
CREATE INDEX client_info_push_role ON client_info_push (platform_id, role, country_code, party_id);

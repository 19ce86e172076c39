-- A connected role its platform's credentials no longer list is SUSPENDED, no longer PLANNED (queries.sql,
-- drop_unlisted_roles; mod_hub_client_info.asciidoc: PLANNED is a party that "has never been connected"). The roles
-- dropped before this migration are found by the CONNECTED pushed of them (every change of a role's status is pushed,
-- migration 0003); each becomes SUSPENDED now, and that is pushed to the other parties, which were told PLANNED.
WITH changed AS (
    UPDATE party_role r SET status = 'SUSPENDED', status_changed_at = now()
    FROM platform p
    WHERE p.id = r.platform_id AND p.state IN ('REGISTERED', 'SUSPENDED') AND r.status = 'PLANNED'
      AND EXISTS (SELECT 1 FROM client_info_push c
                  WHERE c.platform_id = r.platform_id AND c.role = r.role AND c.country_code = r.country_code
                    AND c.party_id = r.party_id AND c.status = 'CONNECTED')
    RETURNING r.platform_id, r.role, r.country_code, r.party_id, r.status_changed_at
)
INSERT INTO client_info_push (platform_id, role, country_code, party_id, status, last_updated)
SELECT platform_id, role, country_code, party_id, 'SUSPENDED', status_changed_at FROM changed;

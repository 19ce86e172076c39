-- A platform back from OFFLINE is pushed the ClientInfo it missed, as one back from a suspension is (migration 0027):
-- the still-alive probe that finds it away sets client_info_missed_since (storage/queries.sql, set_platform_liveness).
-- A platform OFFLINE as this is applied missed the others' changes since its roles went OFFLINE.
UPDATE platform p SET client_info_missed_since = least(p.client_info_missed_since, offline.since),
                      client_info_missed_after = NULL
FROM (SELECT platform_id, min(status_changed_at) AS since FROM party_role WHERE status = 'OFFLINE'
      GROUP BY platform_id) AS offline
WHERE p.id = offline.platform_id AND p.state = 'REGISTERED';

-- A hub process trying a platform's pending endpoints refresh holds it until endpoints_refresh_claimed_until, so no
-- other process tries it at the same time and one that stopped while trying is stood in for after that; the claim no
-- longer moves endpoints_refresh_due, which stays when the hub tries next (hub/admin/endpoints.py), for the admin API
-- and the console to show. endpoints_refresh_checks_roles: the rotation that left the refresh pending was answered
-- with roles the platform does not hold, so the refresh reads the party's credentials too and finishes only once the
-- roles it lists match.
ALTER TABLE platform
    ADD COLUMN endpoints_refresh_claimed_until timestamptz,
    ADD COLUMN endpoints_refresh_checks_roles boolean NOT NULL DEFAULT false;

-- When a token A stops working (OCPI_HUB_INVITATION_TTL_S, or the invitation's own expires_in_s). NULL: never, as for
-- every invitation made before this migration (and every token C): an operator withdraws those by removing the
-- platform (DELETE /admin/api/parties/{id}).
ALTER TABLE credentials_token ADD COLUMN expires_at timestamptz;

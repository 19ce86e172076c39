-- How a stored body reads, for whoever queries the routing log with SQL (hub/admin decodes both forms).
COMMENT ON COLUMN routing_log.request_body IS
    'zlib-compressed (RFC 1950), or, for a body under 128 bytes, one 0x00 byte followed by the body as received; '
    'cut at OCPI_HUB_LOG_BODY_MAX_BYTES (request_body_size keeps the size as received)';
COMMENT ON COLUMN routing_log.response_body IS
    'zlib-compressed (RFC 1950), or, for a body under 128 bytes, one 0x00 byte followed by the body as received; '
    'cut at OCPI_HUB_LOG_BODY_MAX_BYTES (response_body_size keeps the size as received)';

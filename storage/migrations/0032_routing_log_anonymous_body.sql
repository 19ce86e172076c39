-- The relay checks a request's token before it reads its body, and reads no body of a caller no registered party's
-- token names (anyone could have the hub hold OCPI_HUB_MAX_BODY_BYTES a request otherwise): such a row keeps no body,
-- and as its size the one the request's Content-Length announced (hub.ocpi.row_parties).
COMMENT ON COLUMN routing_log.request_body_size IS
    'the request body''s size as received; for a request no registered party''s token sent, whose body the hub does '
    'not read and keeps none of, the size its Content-Length announced (0: none announced)';

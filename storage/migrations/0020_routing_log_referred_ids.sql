-- listed_ids also holds the ids a row refers to (storage.log_object_ids): the session, authorization_reference and
-- token uid a pushed CDR names, the authorization_reference and token uid of a Session put or patched, what a command
-- names besides what it acts on, and for a result posted to a response_url the hub handed out, its command's ids and
-- X-Request-IDs (as 'REQUEST:<id>'), so that object_id=<a session> finds its STOP_SESSION, its results and its CDR.
-- Covered by the row's keyed hash as before (no new hash form: rows written before keep verifying); indexed by 0013's
-- GIN index. Only the column's description changes.
COMMENT ON COLUMN routing_log.listed_ids IS
    'The ids (id, or uid for tokens) of the objects a GET list answer of cdrs, sessions, tokens or tariffs named; or '
    'the ids a row refers to besides its object_id: a CDR''s session_id, authorization_reference and token uid, a '
    'Session''s authorization_reference and token uid, a command''s, and a result''s (its command''s, and its command''s '
    'X-Request-IDs as REQUEST:<id>)';

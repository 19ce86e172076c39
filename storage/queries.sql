-- Named queries: each block starts with "-- name: <name>" and is loaded by storage/sql.py.

-- name: roles_held
-- Active roles that share a country code and party id with one of the given pairs.
SELECT r.role, r.country_code, r.party_id, r.platform_id
FROM party_role r
WHERE r.status <> 'UNREGISTERED'
  AND (upper(r.country_code), upper(r.party_id)) IN (
      SELECT upper(c), upper(p) FROM unnest($1::text[], $2::text[]) AS t(c, p));

-- name: insert_platform
INSERT INTO platform (name) VALUES ($1) RETURNING id;

-- name: insert_party_roles
-- New roles are PLANNED, and a new ClientInfo object is pushed to the connected parties. Country code and party id
-- in capitals, however typed (CiStrings, matched in any case; published as stored: migration 0011).
WITH inserted AS (
    INSERT INTO party_role (platform_id, role, country_code, party_id)
    SELECT $1, r, upper(c), upper(p) FROM unnest($2::text[], $3::text[], $4::text[]) AS t(r, c, p)
    RETURNING id, platform_id, role, country_code, party_id, status, status_changed_at
), pushed AS (
    INSERT INTO client_info_push (platform_id, role, country_code, party_id, status, last_updated)
    SELECT platform_id, role, country_code, party_id, status, status_changed_at FROM inserted
)
SELECT id FROM inserted ORDER BY id;

-- name: token_of_platform
SELECT true FROM credentials_token WHERE token_hash = $1 AND platform_id = $2;

-- name: insert_token
INSERT INTO credentials_token (token_hash, platform_id, kind) VALUES ($1, $2, $3);

-- name: insert_invitation_token
-- A token A, and when it expires ($3 seconds from now; NULL: never).
INSERT INTO credentials_token (token_hash, platform_id, kind, expires_at)
VALUES ($1, $2, 'A', now() + make_interval(secs => $3::float8))
RETURNING expires_at;

-- name: spend_tokens
-- A credentials exchange leaves the platform its new token C ($2) alone: every other token it held goes, the hash of
-- the newest of each kind kept as spent (migration 0031), so a call with it is told so (hub.auth.why_unknown). The new
-- token C goes too (a rotation inserted it before): its row is made again as kind C, as `ocpi-hub connect` needs.
WITH gone AS (
    DELETE FROM credentials_token WHERE platform_id = $1 RETURNING token_hash, kind, created_at
)
INSERT INTO spent_token (platform_id, kind, token_hash)
SELECT DISTINCT ON (kind) $1, kind, token_hash FROM gone WHERE token_hash <> $2 ORDER BY kind, created_at DESC
ON CONFLICT (platform_id, kind) DO UPDATE SET token_hash = excluded.token_hash, spent_at = excluded.spent_at;

-- name: delete_token
-- A token C issued for a credentials rotation that did not complete.
DELETE FROM credentials_token WHERE token_hash = $1;

-- name: lock_platform
SELECT id, name, state, token_b FROM platform WHERE id = $1 FOR UPDATE;

-- name: registered_parties
-- Which of these parties ('CC-PID', upper-cased) a registered (or suspended) platform holds a role of.
SELECT DISTINCT upper(r.country_code) || '-' || upper(r.party_id) AS party
FROM party_role r JOIN platform p ON p.id = r.platform_id
WHERE p.state IN ('REGISTERED', 'SUSPENDED') AND r.status <> 'UNREGISTERED'
  AND upper(r.country_code) || '-' || upper(r.party_id) = any($1::text[]);

-- name: platform_roles
SELECT id, role, country_code, party_id, status FROM party_role
WHERE platform_id = $1 AND status <> 'UNREGISTERED' ORDER BY id;

-- name: store_connection
-- The outcome of a credentials exchange (POST or PUT, either direction): the endpoints and roles were just fetched,
-- so no refresh of them is pending.
UPDATE platform SET state = 'REGISTERED', versions_url = $2, version = $3, version_url = $4, token_b = $5,
       token_encoding = $6, registered_at = coalesce(registered_at, now()), last_seen = now(),
       endpoints_refresh_due = NULL, endpoints_refresh_failures = 0, endpoints_refresh_error = NULL,
       endpoints_refresh_claimed_until = NULL, endpoints_refresh_checks_roles = false
WHERE id = $1;

-- name: switch_rotated_tokens
-- A rotation the party took that the hub could not finish: the party's new token B ($2; NULL keeps the old one)
-- and the versions URL it answered ($3, NULL: keeps the old one); of the hub's tokens C only the new one is left
-- (spend_tokens). Endpoints, version and roles stay as they were; with a new token B their refresh is due in $4 s, the
-- rotation counting as its first failed try, for the reason $5; $6: the roles it answered did not match (the console
-- says the roles the party lists must match too; every refresh checks them). A try under way with the old token B no
-- longer holds the refresh: its outcome is ignored.
UPDATE platform SET token_b = coalesce($2, token_b), versions_url = coalesce($3, versions_url),
       endpoints_refresh_due = CASE WHEN $2 IS NULL THEN endpoints_refresh_due
                                    ELSE now() + make_interval(secs => $4) END,
       endpoints_refresh_failures = CASE WHEN $2 IS NULL THEN endpoints_refresh_failures ELSE 1 END,
       endpoints_refresh_error = CASE WHEN $2 IS NULL THEN endpoints_refresh_error ELSE $5 END,
       endpoints_refresh_claimed_until = CASE WHEN $2 IS NULL THEN endpoints_refresh_claimed_until END,
       endpoints_refresh_checks_roles = CASE WHEN $2 IS NULL THEN endpoints_refresh_checks_roles ELSE $6 END
WHERE id = $1;

-- name: next_endpoints_refresh
-- Seconds until the earliest pending endpoints refresh that no hub process holds is due (0 or less: due now; NULL:
-- none pending): how long the refresh loop may sleep. One row from the partial index on endpoints_refresh_due.
SELECT extract(epoch FROM min(greatest(endpoints_refresh_due, endpoints_refresh_claimed_until)) - now())::float8
FROM platform WHERE state = 'REGISTERED' AND endpoints_refresh_due IS NOT NULL;

-- name: claim_endpoints_refreshes
-- The registered platforms whose endpoints refresh is due, taken by this hub process for $1 s (longer than a try
-- takes), so no other process takes them meanwhile, and one that stopped while trying is stood in for once that time
-- has passed. When it is due stays as it was: the outcome of the try sets the next one.
UPDATE platform SET endpoints_refresh_claimed_until = now() + make_interval(secs => $1)
WHERE state = 'REGISTERED' AND endpoints_refresh_due <= now()
  AND (endpoints_refresh_claimed_until IS NULL OR endpoints_refresh_claimed_until <= now())
RETURNING id, name, versions_url, token_b, endpoints_refresh_failures;

-- name: claim_endpoints_refresh
-- A refresh of platform $1's endpoints the operator asked for, taken by this hub process for $2 s as
-- claim_endpoints_refreshes takes a due one, whether or not one is pending or due: no row if the platform is not
-- registered, or another process holds it now (a try of the hub's own, or another operator's).
UPDATE platform SET endpoints_refresh_claimed_until = now() + make_interval(secs => $2)
WHERE id = $1 AND state = 'REGISTERED'
  AND (endpoints_refresh_claimed_until IS NULL OR endpoints_refresh_claimed_until <= now())
RETURNING id, name, versions_url, token_b, endpoints_refresh_claimed_until;

-- name: release_endpoints_refresh
-- The operator's refresh of platform $1 is over and stored nothing: its claim, taken until $2, goes (not a later one
-- another process took once it had run out).
UPDATE platform SET endpoints_refresh_claimed_until = NULL WHERE id = $1 AND endpoints_refresh_claimed_until = $2;

-- name: endpoints_source
-- Where and with which token the hub fetches a platform's endpoints, whether a refresh of them is pending (and the
-- rotation that left it was answered with roles not granted), and whether a hub process is trying it now, until when.
SELECT id, name, state, versions_url, version, token_b, endpoints_refresh_due, endpoints_refresh_failures,
       endpoints_refresh_error, endpoints_refresh_checks_roles, endpoints_refresh_claimed_until,
       coalesce(endpoints_refresh_claimed_until > now(), false) AS endpoints_refresh_trying_now
FROM platform WHERE id = $1;

-- name: store_refreshed_endpoints
-- The version and endpoints fetched again from versions URL $2 with token B $3 (sealed, as read before the fetch):
-- stored only if the platform still has that URL and token (a credentials exchange meanwhile fetched its own).
UPDATE platform SET version = $4, version_url = $5, token_encoding = $6, endpoints_refresh_due = NULL,
       endpoints_refresh_failures = 0, endpoints_refresh_error = NULL, endpoints_refresh_claimed_until = NULL,
       endpoints_refresh_checks_roles = false
WHERE id = $1 AND state = 'REGISTERED' AND versions_url = $2 AND token_b = $3
RETURNING id;

-- name: endpoints_refresh_failed
-- A pending refresh the hub tried on its own failed again, for the reason $2: the next try in $3 s, and the process
-- lets go of it. Not if nothing is pending, or the fetch used a versions URL $4 or token B $5 the platform no longer
-- has (a credentials exchange meanwhile set its own).
UPDATE platform SET endpoints_refresh_due = now() + make_interval(secs => $3),
       endpoints_refresh_failures = endpoints_refresh_failures + 1, endpoints_refresh_error = $2,
       endpoints_refresh_claimed_until = NULL
WHERE id = $1 AND endpoints_refresh_due IS NOT NULL AND versions_url = $4 AND token_b = $5
RETURNING endpoints_refresh_failures;

-- name: operator_endpoints_refresh_failed
-- A pending refresh the operator asked for failed, for the reason $2: only why is kept (the console shows the last
-- reason); its schedule, and the failures it counts, stay as they were. The same conditions as endpoints_refresh_failed.
UPDATE platform SET endpoints_refresh_error = $2
WHERE id = $1 AND endpoints_refresh_due IS NOT NULL AND versions_url = $3 AND token_b = $4
RETURNING endpoints_refresh_due;

-- name: platform_endpoints
SELECT identifier, interface_role, url FROM platform_endpoint WHERE platform_id = $1 ORDER BY identifier, interface_role;

-- name: delete_endpoints
DELETE FROM platform_endpoint WHERE platform_id = $1;

-- name: insert_endpoints
INSERT INTO platform_endpoint (platform_id, identifier, interface_role, url)
SELECT $1, i, r, u FROM unnest($2::text[], $3::text[], $4::text[]) AS t(i, r, u)
ON CONFLICT (platform_id, identifier, interface_role) DO UPDATE SET url = excluded.url;

-- name: connect_role
-- The role is CONNECTED; if that is a change, its ClientInfo is pushed.
WITH old AS (
    SELECT id, status FROM party_role WHERE id = $1 FOR UPDATE
), changed AS (
    UPDATE party_role r SET status = 'CONNECTED', business_details = $2,
           status_changed_at = CASE WHEN old.status = 'CONNECTED' THEN r.status_changed_at ELSE now() END
    FROM old WHERE r.id = old.id
    RETURNING r.platform_id, r.role, r.country_code, r.party_id, r.status_changed_at, old.status AS was
)
INSERT INTO client_info_push (platform_id, role, country_code, party_id, status, last_updated)
SELECT platform_id, role, country_code, party_id, 'CONNECTED', status_changed_at FROM changed
WHERE was <> 'CONNECTED';

-- name: drop_unlisted_roles
-- credentials.asciidoc: roles is the "List of the roles this party provides": a connected role (CONNECTED or OFFLINE)
-- the platform no longer lists is SUSPENDED, so nothing is routed to it, and the change is pushed
-- (mod_hub_client_info.asciidoc, SUSPENDED: "Party is now longer active"; PLANNED is a party that "has never been
-- connected", as a role its credentials never listed stays). Listed again, it is CONNECTED again (connect_role). The
-- platform misses no push by it: it lists one role at least ("+"), which stays or becomes CONNECTED (connect_role), so
-- it is still pushed every change and needs no client_info_missed_since, unlike an OFFLINE one (set_platform_liveness).
WITH changed AS (
    UPDATE party_role SET status = 'SUSPENDED', status_changed_at = now()
    WHERE platform_id = $1 AND id <> all($2::bigint[]) AND status IN ('CONNECTED', 'OFFLINE')
    RETURNING platform_id, role, country_code, party_id, status_changed_at
)
INSERT INTO client_info_push (platform_id, role, country_code, party_id, status, last_updated)
SELECT platform_id, role, country_code, party_id, 'SUSPENDED', status_changed_at FROM changed;

-- name: unregister_platform
UPDATE platform SET state = 'UNREGISTERED', token_b = NULL, unregistered_at = now() WHERE id = $1;

-- name: unregister_roles
-- mod_hub_client_info.asciidoc: an invalidated ClientInfo is pushed with status SUSPENDED.
WITH changed AS (
    UPDATE party_role SET status = 'UNREGISTERED', status_changed_at = now()
    WHERE platform_id = $1 AND status <> 'UNREGISTERED'
    RETURNING platform_id, role, country_code, party_id, status_changed_at
)
INSERT INTO client_info_push (platform_id, role, country_code, party_id, status, last_updated)
SELECT platform_id, role, country_code, party_id, 'SUSPENDED', status_changed_at FROM changed;

-- name: directory_platforms
SELECT id, name, state, versions_url, version, version_url, token_b, token_encoding, suspended_at, suspended_reason
FROM platform WHERE state <> 'UNREGISTERED';

-- name: suspend_platform
-- The operator suspends a registered platform (migration 0026): its connected roles go OFFLINE, each change pushed as
-- ClientInfo; NULL when it is not registered (invited, suspended already, removed, or none). From now on it misses the
-- other parties' changes (migration 0027), and those still waiting to be pushed: it is pushed them once it is back.
-- From a second before: a change whose transaction began before this one and commits after it is missed too.
WITH suspended AS (
    UPDATE platform SET state = 'SUSPENDED', suspended_at = now(), suspended_reason = $2,
           client_info_missed_since = least(client_info_missed_since, now() - interval '1 second',
               (SELECT min(last_updated) FROM client_info_push WHERE delivered_at IS NULL)),
           client_info_missed_after = NULL, client_info_catch_up_from = NULL
    WHERE id = $1 AND state = 'REGISTERED'
    RETURNING id, suspended_at
), changed AS (
    UPDATE party_role r SET status = 'OFFLINE', status_changed_at = now()
    FROM suspended p WHERE r.platform_id = p.id AND r.status = 'CONNECTED'
    RETURNING r.platform_id, r.role, r.country_code, r.party_id, r.status_changed_at
), pushed AS (
    INSERT INTO client_info_push (platform_id, role, country_code, party_id, status, last_updated)
    SELECT platform_id, role, country_code, party_id, 'OFFLINE', status_changed_at FROM changed
)
SELECT suspended_at FROM suspended;

-- name: resume_platform
-- A suspended platform is registered again; its roles stay OFFLINE until the still-alive probe finds its server
-- answering (routing.still_alive), which makes them CONNECTED and pushes that; then it is pushed the ClientInfo it
-- missed (client_infos_missed). NULL when it was not suspended.
UPDATE platform SET state = 'REGISTERED', suspended_at = NULL, suspended_reason = NULL
WHERE id = $1 AND state = 'SUSPENDED'
RETURNING id;

-- name: directory_roles
SELECT r.platform_id, r.role, r.country_code, r.party_id, r.status, r.business_details
FROM party_role r JOIN platform p ON p.id = r.platform_id
WHERE p.state <> 'UNREGISTERED' AND r.status <> 'UNREGISTERED'
ORDER BY r.id;

-- name: directory_departed
-- The parties of roles whose platform left the hub (SUSPENDED in the ClientInfo list): told apart from ones never known.
SELECT DISTINCT upper(r.country_code) AS country_code, upper(r.party_id) AS party_id
FROM party_role r JOIN platform p ON p.id = r.platform_id
WHERE p.state = 'UNREGISTERED' OR r.status = 'UNREGISTERED';

-- name: directory_endpoints
SELECT e.platform_id, e.identifier, e.interface_role, e.url
FROM platform_endpoint e JOIN platform p ON p.id = e.platform_id
WHERE p.state <> 'UNREGISTERED';

-- name: directory_tokens
SELECT t.token_hash, t.platform_id, t.kind, t.expires_at
FROM credentials_token t JOIN platform p ON p.id = t.platform_id
WHERE p.state <> 'UNREGISTERED';

-- name: directory_removed_tokens
-- The tokens of platforms that left the hub, spent ones too, and when they left: a call with one is told so
-- (hub.auth.why_unknown).
SELECT t.token_hash, p.unregistered_at
FROM credentials_token t JOIN platform p ON p.id = t.platform_id
WHERE p.state = 'UNREGISTERED'
UNION ALL
SELECT s.token_hash, p.unregistered_at
FROM spent_token s JOIN platform p ON p.id = s.platform_id
WHERE p.state = 'UNREGISTERED';

-- name: directory_spent_tokens
-- The tokens a credentials exchange replaced, of platforms on the hub: which platform's, and when they were spent.
SELECT s.token_hash, s.kind, s.spent_at, p.name
FROM spent_token s JOIN platform p ON p.id = s.platform_id
WHERE p.state <> 'UNREGISTERED';

-- name: list_parties
-- Every platform's roles, or one platform's ($1; NULL: all); endpoints_from_before: why its endpoints are from before
-- a rotation the hub could not finish (NULL: they are not), endpoints_trying_now: a hub process is fetching them
-- again, endpoints_next_try: when it does that next otherwise (NULL while it is trying: the try's outcome sets it).
SELECT r.country_code, r.party_id, r.role, p.name AS platform, p.id AS platform_id, r.status,
       r.status_changed_at AS status_since, p.registered_at, p.last_seen, p.token_encoding, p.state AS platform_state,
       p.suspended_at, p.suspended_reason,
       p.endpoints_refresh_error AS endpoints_from_before,
       coalesce(p.endpoints_refresh_due IS NOT NULL AND p.endpoints_refresh_claimed_until > now(), false)
           AS endpoints_trying_now,
       CASE WHEN p.endpoints_refresh_claimed_until > now() THEN NULL ELSE p.endpoints_refresh_due END
           AS endpoints_next_try,
       (SELECT max(t.expires_at) FROM credentials_token t
        WHERE t.platform_id = p.id AND t.kind = 'A' AND p.state = 'INVITED') AS invitation_expires_at
FROM party_role r JOIN platform p ON p.id = r.platform_id
WHERE $1::bigint IS NULL OR p.id = $1
ORDER BY upper(r.country_code), upper(r.party_id), r.role, r.id;

-- name: platform_shown
-- One platform (GET /admin/api/parties/{id}, `ocpi-hub parties show`), one connected by `ocpi-hub connect` and
-- holding no role yet too.
SELECT p.name, p.state, p.registered_at, p.last_seen, p.suspended_at, p.suspended_reason,
       (SELECT max(t.expires_at) FROM credentials_token t
        WHERE t.platform_id = p.id AND t.kind = 'A' AND p.state = 'INVITED') AS invitation_expires_at
FROM platform p WHERE p.id = $1;

-- name: touch_platforms
UPDATE platform SET last_seen = t.seen
FROM unnest($1::bigint[], $2::timestamptz[]) AS t(id, seen)
WHERE platform.id = t.id AND (platform.last_seen IS NULL OR platform.last_seen < t.seen);

-- name: relayed_location
SELECT * FROM relayed_location WHERE key = $1;

-- name: append_routing_log
-- One batch of the group commit in one call (migrations 0008, 0014, 0015, 0016, 0021): appended false, and no row
-- written, when the chain's head shows the batch in already (or it has none: amendments alone); next_ids, $7 ids
-- reserved for the writer's next rows. Each row is a routing_log_timed_row (storage.routing_log.COLUMNS, object_id,
-- listed_ids, id, receiver_ms, connection_wait_ms); $6 the amendments of rows committed before, each written once,
-- numbered along their chain.
SELECT appended, next_ids FROM append_routing_log_timed($1::routing_log_timed_row[], $2, $3, $4,
                                                        $5::relayed_location_entry[],
                                                        $6::routing_log_amendment_numbered[], $7);

-- name: append_chained_rows
-- A batch of rows with no amendments (nearly every group commit), written as append_routing_log writes it, in one
-- statement: appended false, and no row written, when the chain's head shows the batch in already. The head's upsert
-- locks it, so a batch given up on and retried on another connection while the first still runs waits for that one
-- and then writes nothing. Measured on an embedded PostgreSQL 17, a one-row batch costs the server 320 us of CPU this
-- way against 390 us through append_routing_log_timed's PL/pgSQL, its advisory lock and its separate read of the head.
WITH head AS (
    INSERT INTO routing_log_chain AS c (chain_id, last_seq, last_hash) VALUES ($2, $3, $4)
    ON CONFLICT (chain_id) DO UPDATE SET last_seq = excluded.last_seq, last_hash = excluded.last_hash
    WHERE c.last_seq IS NULL OR c.last_seq < excluded.last_seq
    RETURNING true
), written AS (
    INSERT INTO routing_log (
        id, received_at, chain_id, seq, request_id, forwarded_request_id, correlation_id, from_country_code,
        from_party_id, to_country_code, to_party_id, caller_platform_id, receiver_platform_id, module, interface,
        method, path, query, routing, http_status, ocpi_status_code, duration_ms, error, request_headers,
        response_headers, request_body, request_body_size, response_body, response_body_size, prev_hash, hash,
        object_id, listed_ids, receiver_ms, connection_wait_ms)
    SELECT coalesce(e.id, nextval('routing_log_row_id')), e.received_at, e.chain_id, e.seq, e.request_id,
        e.forwarded_request_id, e.correlation_id, e.from_country_code, e.from_party_id, e.to_country_code,
        e.to_party_id, e.caller_platform_id, e.receiver_platform_id, e.module, e.interface, e.method, e.path,
        e.query, e.routing, e.http_status, e.ocpi_status_code, e.duration_ms, e.error, e.request_headers,
        e.response_headers, e.request_body, e.request_body_size, e.response_body, e.response_body_size,
        e.prev_hash, e.hash, e.object_id, e.listed_ids, e.receiver_ms, e.connection_wait_ms
    FROM unnest($1::routing_log_timed_row[]) WITH ORDINALITY AS e
    WHERE EXISTS (SELECT FROM head)
    ORDER BY e.ordinality
    RETURNING id
), located AS (
    INSERT INTO relayed_location (key, caller_platform_id, receiver_platform_id, from_country_code, from_party_id,
                                  to_country_code, to_party_id, module, url)
    SELECT * FROM unnest($5::relayed_location_entry[]) WHERE EXISTS (SELECT FROM head)
)
-- the ids of the next batches drawn once written has run, so after the ids its rows without one took: ids follow
-- seq along a chain (a CTE nobody reads runs after the main query)
SELECT EXISTS (SELECT FROM head) AS appended,
       ARRAY(SELECT nextval('routing_log_row_id') FROM generate_series(1, $6::integer)
             WHERE (SELECT count(*) FROM written) IS NOT NULL) AS next_ids;

-- name: reserve_routing_log_ids
-- Ids for a writer's rows when it holds too few (its first batch, a batch larger than the ones before).
SELECT ARRAY(SELECT nextval('routing_log_row_id') FROM generate_series(1, $1::integer));

-- name: chain_heads
-- amendments: the highest number of an amendment written in the chain (migration 0016), 0 for none
SELECT chain_id, last_seq, last_hash, coalesce(amendments, 0) AS amendments FROM routing_log_chain;

-- name: checkpoint_heads
-- Every chain's head with the id of its row (null when retention dropped it): a checkpoint's (hub.checkpoint).
SELECT c.chain_id, c.last_seq, c.last_hash, coalesce(c.amendments, 0) AS amendments,
       (SELECT min(r.id) FROM routing_log AS r WHERE r.chain_id = c.chain_id AND r.seq = c.last_seq) AS row_id
FROM routing_log_chain AS c ORDER BY c.chain_id;

-- name: rows_up_to
-- How many rows each chain has from its start up to a seq ($1, $2: chain ids and seqs): a checkpoint's chains.
SELECT r.chain_id, count(*) AS kept FROM routing_log AS r
JOIN unnest($1::uuid[], $2::bigint[]) AS upto (chain_id, seq) ON r.chain_id = upto.chain_id AND r.seq <= upto.seq
GROUP BY r.chain_id;

-- name: amendments_since
-- The numbered amendments of rows up to a seq written after a chain counted a number of them ($1, $2, $3: chain ids,
-- seqs and counts): a checkpoint's chains, whose rows' amendments since it are named in verify's notes.
SELECT DISTINCT ON (a.chain_id, a.number) a.chain_id, a.seq, a.number, a.http_status, a.ocpi_status_code,
       upto.amendments AS counted
FROM routing_log_amendment AS a
JOIN unnest($1::uuid[], $2::bigint[], $3::bigint[]) AS upto (chain_id, seq, amendments)
    ON a.chain_id = upto.chain_id AND a.seq <= upto.seq AND a.number > upto.amendments
ORDER BY a.chain_id, a.number, upto.amendments;

-- name: chain_floors
SELECT chain_id, seq, hash, prev_hash, next_apart, prev_apart, mac FROM routing_log_floor;

-- name: chain_stretches
-- For a verify of a time range ($1, $2: since and until, or null): each chain's lowest and highest seq received in it
-- (lo, hi), and the seqs of the rows next to them (prev_seq, next_seq; null: none), whose links to the range's first
-- and last rows are checked too, so that a deleted first or last row of the range leaves a gap between rows checked.
-- Each neighbour is one step of the (chain_id, seq) index.
WITH inside AS (
    SELECT chain_id, min(seq) AS lo, max(seq) AS hi FROM routing_log
    WHERE ($1::timestamptz IS NULL OR received_at >= $1) AND ($2::timestamptz IS NULL OR received_at < $2)
    GROUP BY chain_id
)
SELECT i.chain_id, i.lo, i.hi,
    (SELECT max(r.seq) FROM routing_log AS r WHERE r.chain_id = i.chain_id AND r.seq < i.lo) AS prev_seq,
    (SELECT min(r.seq) FROM routing_log AS r WHERE r.chain_id = i.chain_id AND r.seq > i.hi) AS next_seq
FROM inside AS i;

-- name: rows_at
-- The rows at (chain_id, seq) pairs given as two arrays: the heads an auditor saved, checked by verify.
SELECT r.* FROM routing_log AS r
JOIN unnest($1::uuid[], $2::bigint[]) AS saved (chain_id, seq) ON r.chain_id = saved.chain_id AND r.seq = saved.seq;

-- name: chain_heads_of
-- The heads of the chains $1, their seals and floors (chain_seals_of, chain_floors_of): for rows checked where they are
-- shown (storage.log_row_check).
SELECT chain_id, last_seq, last_hash FROM routing_log_chain WHERE chain_id = any($1::uuid[]);

-- name: chain_seals_of
SELECT chain_id, last_seq, last_hash, mac FROM routing_log_sealed_chain WHERE chain_id = any($1::uuid[]);

-- name: chain_floors_of
SELECT chain_id, seq, hash, prev_hash, next_apart, prev_apart, mac FROM routing_log_floor
WHERE chain_id = any($1::uuid[]);

-- name: chain_neighbours
-- The rows beside each row $1 at seq $3 of chain $2 (one array entry a row), by beside, its id: the closest before it
-- and after it by seq (retention may have dropped the rows between), and any other at its seq. Each one step of the
-- (chain_id, seq) index, all in one round trip; their links alone, not their content.
SELECT shown.id AS beside, n.id, shown.chain_id, n.seq, n.prev_hash, n.hash
FROM unnest($1::bigint[], $2::uuid[], $3::bigint[]) AS shown (id, chain_id, seq)
CROSS JOIN LATERAL (
    (SELECT id, seq, prev_hash, hash FROM routing_log AS r
     WHERE r.chain_id = shown.chain_id AND r.seq < shown.seq ORDER BY r.seq DESC LIMIT 1)
    UNION ALL (SELECT id, seq, prev_hash, hash FROM routing_log AS r
               WHERE r.chain_id = shown.chain_id AND r.seq > shown.seq ORDER BY r.seq LIMIT 1)
    UNION ALL (SELECT id, seq, prev_hash, hash FROM routing_log AS r
               WHERE r.chain_id = shown.chain_id AND r.seq = shown.seq AND r.id <> shown.id)
) AS n;

-- name: seal_chain
-- A chain of unkeyed hashes sealed at its last row (storage.migrate, and a spooled chain storage.log_spool writes
-- later, which moves an earlier seal on).
INSERT INTO routing_log_sealed_chain (chain_id, last_seq, last_hash, mac) VALUES ($1, $2, $3, $4)
ON CONFLICT (chain_id) DO UPDATE SET last_seq = excluded.last_seq, last_hash = excluded.last_hash, mac = excluded.mac,
    sealed_at = now()
WHERE routing_log_sealed_chain.last_seq < excluded.last_seq;

-- name: hashes_at
SELECT hash FROM routing_log WHERE chain_id = $1 AND seq = $2;

-- name: sealed_chains
-- The chains of unkeyed hashes, each with its last row when it was sealed (migration 0012).
SELECT chain_id, last_seq, last_hash, mac FROM routing_log_sealed_chain;

-- name: client_infos
-- The hub's ClientInfo list (mod_hub_client_info.asciidoc, Sender GET): every party but the caller's own, by
-- role id, that is in the order the roles were created (transport_and_format.asciidoc, Paginated Response: "order the
-- objects by creation date ascending", so that a role whose status changes while a client pages keeps its place and
-- moves no other to a page the client already read); a role whose platform left the hub is SUSPENDED. One ClientInfo
-- per role and party: a party id that left and was registered again (by another platform, or invited anew) is listed
-- as it is now, not also as it was. Paginated with offset and limit, in one round trip: the page's rows each with the
-- total, or, past the last page, one row holding only the total.
WITH listed AS (
    SELECT id, role, country_code, party_id,
           CASE WHEN status = 'UNREGISTERED' THEN 'SUSPENDED' ELSE status END AS status,
           status_changed_at AS last_updated
    FROM party_role r
    WHERE platform_id <> $1
      AND ($2::timestamptz IS NULL OR status_changed_at >= $2)
      AND ($3::timestamptz IS NULL OR status_changed_at < $3)
      AND NOT EXISTS (SELECT 1 FROM party_role later
                      WHERE later.role = r.role AND upper(later.country_code) = upper(r.country_code)
                        AND upper(later.party_id) = upper(r.party_id) AND later.id > r.id)
)
SELECT counted.total, page.role, page.country_code, page.party_id, page.status, page.last_updated
FROM (SELECT count(*) AS total FROM listed) AS counted
LEFT JOIN LATERAL (SELECT * FROM listed ORDER BY id OFFSET $4 LIMIT $5) AS page ON true
ORDER BY page.id;

-- name: take_client_info_push_turn
-- One hub process pushes at a time, so that the changes reach every party in the order they happened: with two
-- pushing side by side, a party could get CONNECTED and then the PLANNED that came before it. False: another has it.
-- A lock of the session, held across the pushes with no transaction open; end_client_info_push_turn gives it back.
SELECT pg_try_advisory_lock(210846855);  -- 0x0C914487

-- name: end_client_info_push_turn
SELECT pg_advisory_unlock(210846855);

-- name: take_rotation_turn
-- One rotation of a platform's credentials at a time, whichever hub process runs it ($1: the platform id). A lock of
-- the session, held while the party is called, with no transaction open; end_rotation_turn gives it back. False:
-- another rotation of that platform holds it.
SELECT pg_try_advisory_lock(hashtextextended('rotate_credentials', $1::bigint));

-- name: end_rotation_turn
SELECT pg_advisory_unlock(hashtextextended('rotate_credentials', $1::bigint));

-- name: pending_client_info_pushes
-- The turn's holder is the only reader that marks them delivered: no row lock is needed. role_id: the role the change
-- is of (its newest, should the platform hold it again), as client_infos_refused_record keeps it.
SELECT c.id, c.platform_id, c.role, c.country_code, c.party_id, c.status, c.last_updated,
       (SELECT max(r.id) FROM party_role r WHERE r.platform_id = c.platform_id AND r.role = c.role
          AND r.country_code = c.country_code AND r.party_id = c.party_id) AS role_id
FROM client_info_push c WHERE c.delivered_at IS NULL ORDER BY c.id LIMIT 50;

-- name: client_info_recipients
-- The platforms a ClientInfo round pushes to, as they are now: registered, with a hubclientinfo Receiver and a role
-- connected (hub/client_info.py, _recipients: the directory's filter, which a process may not have loaded yet).
SELECT p.id FROM platform p
WHERE p.state = 'REGISTERED'
  AND EXISTS (SELECT 1 FROM platform_endpoint e
              WHERE e.platform_id = p.id AND e.identifier = 'hubclientinfo' AND e.interface_role = 'RECEIVER')
  AND EXISTS (SELECT 1 FROM party_role r WHERE r.platform_id = p.id AND r.status = 'CONNECTED');

-- name: platforms_missing_client_infos
-- The registered platforms that missed ClientInfo pushes while suspended (migration 0027) or OFFLINE (0028), and where
-- they are in being pushed them; read_at: when, for client_infos_missed_pushed. Those of them pushed this round ($1)
-- are caught up from now on, if not from an earlier round already (catch_up_from, migration 0029): this round and
-- every later one push them every change.
WITH begun AS (
    UPDATE platform SET client_info_catch_up_from = now()
    WHERE id = any($1::bigint[]) AND client_info_missed_since IS NOT NULL AND state = 'REGISTERED'
      AND client_info_catch_up_from IS NULL
    RETURNING id, client_info_catch_up_from
)
SELECT p.id, p.client_info_missed_since AS since, p.client_info_missed_after AS after,
       coalesce(p.client_info_catch_up_from, begun.client_info_catch_up_from) AS catch_up_from, now() AS read_at
FROM platform p LEFT JOIN begun ON begun.id = p.id
WHERE p.client_info_missed_since IS NOT NULL AND p.state = 'REGISTERED';

-- name: client_infos_missed
-- What platform $1 missed since $2: the ClientInfo, as it is now (as client_infos lists it), of every other platform's
-- role whose status changed since then; by role id, after role $3, $4 at most. Not a role whose newest change was
-- delivered since the catch-up began ($5), or is still to be: that change is pushed to the platform as every change
-- is, and the catch-up would push it a second time, or, read before a change still pending, a newer status before it.
-- Nor a role the platform refused (client_infos_refused): each round pushes it that after the rest.
SELECT r.id, r.id AS role_id, r.platform_id, r.role, r.country_code, r.party_id,
       CASE WHEN r.status = 'UNREGISTERED' THEN 'SUSPENDED' ELSE r.status END AS status,
       r.status_changed_at AS last_updated
FROM party_role r
WHERE r.platform_id <> $1 AND r.status_changed_at >= $2 AND r.id > coalesce($3::bigint, 0)
  AND NOT EXISTS (SELECT 1 FROM party_role later
                  WHERE later.role = r.role AND upper(later.country_code) = upper(r.country_code)
                    AND upper(later.party_id) = upper(r.party_id) AND later.id > r.id)
  AND NOT EXISTS (SELECT 1 FROM client_info_push c
                  WHERE c.platform_id = r.platform_id AND c.role = r.role AND c.country_code = r.country_code
                    AND c.party_id = r.party_id AND (c.delivered_at IS NULL OR c.delivered_at >= $5))
  AND r.id <> all((SELECT client_info_refused FROM platform WHERE id = $1)::bigint[])
ORDER BY r.id LIMIT $4;

-- name: client_infos_refused
-- The roles platforms $1 refused the ClientInfo of (migration 0030), as client_infos lists them now, oldest refusal
-- first. Not a role held again since (a newer one of the same role and party): that one's changes are pushed. Such a
-- role, or one no longer in party_role, is dropped from the platform's list here: nothing would push it again, so
-- nothing would take it, and it would stay there for good.
WITH refused AS (
    SELECT p.id AS recipient, t.role_id, t.n, r.platform_id, r.role, r.country_code, r.party_id, r.status,
           r.status_changed_at
    FROM platform p CROSS JOIN LATERAL unnest(p.client_info_refused) WITH ORDINALITY AS t(role_id, n)
    LEFT JOIN party_role r ON r.id = t.role_id
        AND NOT EXISTS (SELECT 1 FROM party_role later
                        WHERE later.role = r.role AND upper(later.country_code) = upper(r.country_code)
                          AND upper(later.party_id) = upper(r.party_id) AND later.id > r.id)
    WHERE p.id = any($1::bigint[])
), dropped AS (
    UPDATE platform p SET client_info_refused = array(
        SELECT role_id FROM refused WHERE recipient = p.id AND platform_id IS NOT NULL ORDER BY n)
    WHERE p.id IN (SELECT recipient FROM refused WHERE platform_id IS NULL)
)
SELECT recipient, role_id, platform_id, role, country_code, party_id,
       CASE WHEN status = 'UNREGISTERED' THEN 'SUSPENDED' ELSE status END AS status,
       status_changed_at AS last_updated
FROM refused WHERE platform_id IS NOT NULL
ORDER BY recipient, n;

-- name: client_infos_refused_record
-- Platform $1 took the ClientInfo of roles $2 and refused that of roles $3 this round: those taken are no longer
-- refused, those refused go to the end, so that the next round tries the others first.
UPDATE platform SET client_info_refused = array(
    SELECT t.role_id FROM unnest(client_info_refused) WITH ORDINALITY AS t(role_id, n)
    WHERE t.role_id <> all($2::bigint[]) AND t.role_id <> all($3::bigint[]) ORDER BY t.n
) || $3::bigint[]
WHERE id = $1;

-- name: client_infos_missed_pushed
-- Platform $1 was pushed what it missed since $2 up to role $3 (NULL: all of it), as read at $4. Not if it was
-- suspended again meanwhile, nor if its roles went OFFLINE (or came back) since $4: a role pushed in this batch may have
-- changed while it was away, so that catch-up starts over (suspend_platform, set_platform_liveness).
UPDATE platform p SET client_info_missed_after = $3::bigint,
       client_info_missed_since = CASE WHEN $3::bigint IS NULL THEN NULL ELSE client_info_missed_since END,
       client_info_catch_up_from = CASE WHEN $3::bigint IS NULL THEN NULL ELSE client_info_catch_up_from END
WHERE id = $1 AND state = 'REGISTERED' AND client_info_missed_since = $2
  AND NOT EXISTS (SELECT 1 FROM party_role r WHERE r.platform_id = p.id AND r.status_changed_at >= $4);

-- name: client_infos_not_taken
-- Platform $1 did not take the push of a change made at $2 (no answer, or one refusing it), nor was it sent those after
-- it that round: it missed the changes since, as an OFFLINE platform does (set_platform_liveness), and is pushed them at
-- a later round. A catch-up under way from later than $2 starts over from $2; one from earlier, if it is past (by role
-- id) a role changed since $2, goes back to it: that change is one the platform did not take, and the catch-up would
-- not come to it again.
-- Nor was it pushed every change delivered since its catch-up began: that begins anew with the next round that pushes
-- it (platforms_missing_client_infos).
UPDATE platform SET client_info_missed_since = least(client_info_missed_since, $2),
       -- least() passes over a NULL: a catch-up not yet begun (after NULL) stays at its start
       client_info_missed_after = CASE WHEN client_info_missed_since <= $2 AND client_info_missed_after IS NOT NULL
           THEN least(client_info_missed_after,
                      (SELECT min(r.id) - 1 FROM party_role r WHERE r.platform_id <> $1 AND r.status_changed_at >= $2))
       END,
       client_info_catch_up_from = NULL
WHERE id = $1 AND state = 'REGISTERED';

-- name: client_infos_missed_dropped
-- Platforms $1 have no hubclientinfo Receiver to push what they missed to: nothing to catch up on, as long as the mark
-- is still the one read ($2, by position).
UPDATE platform p SET client_info_missed_since = NULL, client_info_missed_after = NULL, client_info_catch_up_from = NULL
FROM unnest($1::bigint[], $2::timestamptz[]) AS t(id, since)
WHERE p.id = t.id AND p.client_info_missed_since = t.since;

-- name: client_info_pushed
UPDATE client_info_push SET delivered_at = now() WHERE id = any($1::bigint[]);

-- name: delete_client_info_pushes_delivered_before
-- Retention: the ClientInfo changes delivered before the cut. Each push one made is a row of the routing log, kept
-- as long as its month is; a change not yet delivered stays, however old.
WITH gone AS (DELETE FROM client_info_push WHERE delivered_at < $1 RETURNING 1)
SELECT count(*) FROM gone;

-- name: client_info_pushes_delivered_before
SELECT count(*) FROM client_info_push WHERE delivered_at < $1;

-- name: delete_relayed_cdr_locations_before
-- Retention: the hub URLs of CDRs relayed before the cut (a CPO's GET of one is then answered "unknown, expired");
-- their POSTs' rows go with their months. Read in full, once per run: the table has no index on created_at, which
-- every CDR POST would pay for.
WITH gone AS (DELETE FROM relayed_location WHERE created_at < $1 RETURNING 1)
SELECT count(*) FROM gone;

-- name: relayed_cdr_locations_before
SELECT count(*) FROM relayed_location WHERE created_at < $1;

-- name: silent_platforms
-- mod_hub_client_info.asciidoc, Still alive check: the connected platforms the hub has heard nothing from for $1 s
-- (silent), and in how many seconds the next of the others will have been silent that long (NULL: none will).
SELECT coalesce(array_agg(id) FILTER (WHERE silent_at < now()), '{}') AS silent,
       extract(epoch FROM min(silent_at) FILTER (WHERE silent_at >= now()) - now())::float8 AS next_in_s
FROM (
    SELECT p.id, coalesce(p.last_seen, p.registered_at) + make_interval(secs => $1) AS silent_at
    FROM platform p
    WHERE p.state = 'REGISTERED'
      AND EXISTS (SELECT 1 FROM party_role r WHERE r.platform_id = p.id AND r.status = 'CONNECTED')
) connected;

-- name: set_platform_liveness
-- A registered platform's roles go OFFLINE or back to CONNECTED together; each change is pushed as ClientInfo. Gone
-- OFFLINE, it misses the other parties' changes from then on, and those still waiting to be pushed, as a suspended
-- platform does (suspend_platform): it is pushed them once it is CONNECTED again.
WITH changed AS (
    UPDATE party_role r SET status = $2, status_changed_at = now()
    FROM platform p
    WHERE p.id = $1 AND r.platform_id = p.id AND p.state = 'REGISTERED'
      AND r.status IN ('CONNECTED', 'OFFLINE') AND r.status <> $2
    RETURNING r.platform_id, r.role, r.country_code, r.party_id, r.status, r.status_changed_at
), pushed AS (
    INSERT INTO client_info_push (platform_id, role, country_code, party_id, status, last_updated)
    SELECT platform_id, role, country_code, party_id, status, status_changed_at FROM changed
), missing AS (
    UPDATE platform SET client_info_missed_since = least(client_info_missed_since, now() - interval '1 second',
               (SELECT min(last_updated) FROM client_info_push WHERE delivered_at IS NULL)),
           client_info_missed_after = NULL, client_info_catch_up_from = NULL
    WHERE id = $1 AND $2 = 'OFFLINE' AND EXISTS (SELECT 1 FROM changed)
)
SELECT count(*) FROM changed;

-- name: auditor_by_token
SELECT name FROM auditor WHERE token_hash = $1;

-- name: insert_auditor
INSERT INTO auditor (name, token_hash) VALUES ($1, $2);

-- name: delete_auditor
DELETE FROM auditor WHERE name = $1 RETURNING id;

-- name: list_auditors
SELECT name, created_at FROM auditor ORDER BY name;

-- name: lock_audit_trail_head
-- The audit trail's one chain: whoever writes an entry holds this row until its transaction ends (migration 0019).
SELECT unchained_upto, last_hash FROM audit_trail_head FOR UPDATE;

-- name: make_audit_trail_head_again
-- The head deleted (storage.audit_trail): made again after the last chained entry, the entries before the first chained
-- one unchained (as 0019 made it; none chained: every entry); nothing when another writer made it meanwhile (this waits
-- for that one's transaction). Its MAC is its first entry's chaining.
INSERT INTO audit_trail_head (unchained_upto, last_id, last_hash)
SELECT coalesce((SELECT id - 1 FROM audit_trail WHERE hash IS NOT NULL ORDER BY id LIMIT 1),
                (SELECT max(id) FROM audit_trail), 0),
       last.id, coalesce(last.hash, decode(repeat('00', 32), 'hex'))
FROM (VALUES (1)) AS one
LEFT JOIN LATERAL (SELECT id, hash FROM audit_trail WHERE hash IS NOT NULL ORDER BY id DESC LIMIT 1) AS last ON true
ON CONFLICT DO NOTHING
RETURNING unchained_upto, last_id, last_hash;

-- name: next_audit_trail_entry
-- Under the head's lock: the next entry's id, its time (the default of audit_trail.at, now()) and its parameters as
-- jsonb gives them back, which its hash covers, so that the entry is written whole, hash included, by one INSERT: a
-- role serving the hub needs no UPDATE of the trail (storage/serving_role.py).
SELECT nextval(pg_get_serial_sequence('audit_trail', 'id')) AS id, now() AS at, $1::jsonb::text AS parameters;

-- name: record_action
INSERT INTO audit_trail (id, at, actor_kind, actor_name, action, parameters, prev_hash, hash) OVERRIDING SYSTEM VALUE
VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8);

-- name: move_audit_trail_head
UPDATE audit_trail_head SET last_id = $1, last_hash = $2, mac = $3;

-- name: audit_trail_in_order
-- Every entry, for verify (storage.audit_trail.verify_trail).
SELECT id, at, actor_kind, actor_name, action, parameters::text AS parameters, prev_hash, hash
FROM audit_trail ORDER BY id;

-- name: export_manifest
-- the signed manifest of an export that ended (hub.admin.export): the trail keeps it for a CSV export's download
SELECT parameters->>'manifest' FROM audit_trail
WHERE action = 'export_manifest' AND parameters->>'export_id' = $1
ORDER BY id LIMIT 1;

-- name: audit_trail
SELECT id, at, actor_kind, actor_name, action, parameters::text AS parameters
FROM audit_trail
WHERE ($1::bigint IS NULL OR id < $1)
ORDER BY id DESC
LIMIT $2;

-- name: routing_log_message
SELECT * FROM routing_log WHERE id = $1;

-- name: routing_log_amendments
-- The amendments (migration 0015) of the rows at (chain_id, seq) pairs given as two arrays: what their callers were
-- answered instead; with their MACs, for storage.log_row_check.
SELECT a.chain_id, a.seq, a.http_status, a.ocpi_status_code, a.message, a.answered_at, a.row_received_at, a.mac,
       a.number, a.number_mac
FROM routing_log_amendment AS a
JOIN unnest($1::uuid[], $2::bigint[]) AS shown (chain_id, seq) ON a.chain_id = shown.chain_id AND a.seq = shown.seq;

-- name: amendments_dropped_of
-- The records of deleted amendments (migration 0016) of the rows at (chain_id, seq) pairs given as two arrays.
SELECT d.chain_id, d.seq, d.number, d.number_mac
FROM routing_log_amendment_dropped AS d
JOIN unnest($1::uuid[], $2::bigint[]) AS shown (chain_id, seq) ON d.chain_id = shown.chain_id AND d.seq = shown.seq;

-- name: every_amendment
-- Every amendment, for verify (few: one per exchange whose commit timed out after its row was chained).
SELECT chain_id, seq, row_received_at, http_status, ocpi_status_code, message, answered_at, mac, number, number_mac
FROM routing_log_amendment;

-- name: dropped_amendments
-- The numbered amendments deleted (migration 0016's trigger records each), for verify: retention's, with their rows.
SELECT chain_id, number, seq, number_mac FROM routing_log_amendment_dropped;

-- name: delete_amendments_of_dropped_rows
-- After retention dropped a partition of rows received before $1, in its transaction: the amendments of its rows,
-- and any a retention of the previous version left when it dropped theirs (migration 0015).
DELETE FROM routing_log_amendment AS a
WHERE a.row_received_at < $1 AND NOT EXISTS (
    SELECT 1 FROM routing_log AS r
    WHERE r.chain_id = a.chain_id AND r.seq = a.seq AND r.received_at = a.row_received_at
);

-- name: routing_log_correlation
-- A conversation's rows, with what checks each (storage.log_row_check): every column but the bodies, which its hash
-- covers by their SHA-256 alone (the hash columns raw).
SELECT id, received_at, request_id, forwarded_request_id, correlation_id, from_country_code, from_party_id,
       to_country_code, to_party_id, caller_platform_id, receiver_platform_id, module, interface, method, path,
       query, routing, http_status,
       ocpi_status_code, duration_ms, receiver_ms, connection_wait_ms, error, object_id, request_body_size,
       response_body_size, chain_id, seq, prev_hash, hash, listed_ids, request_headers, response_headers,
       sha256(request_body) AS request_body_sha256, sha256(response_body) AS response_body_sha256
FROM routing_log WHERE correlation_id = $1
ORDER BY received_at, id
LIMIT $2;

-- name: routing_log_partitions
-- The monthly partitions of routing_log with their bounds, oldest first (not the default partition).
SELECT c.relname AS name,
       (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'FROM \(''([^'']+)''\)'))[1]::timestamptz AS lower,
       (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \(''([^'']+)''\)'))[1]::timestamptz AS upper
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'routing_log'::regclass AND c.relname <> 'routing_log_default'
ORDER BY lower;

-- name: ensure_routing_log_partitions
-- This month's partition and the next $1 ones (a function of migration 0005); returns the names it created.
SELECT routing_log_ensure_partitions($1);

-- name: set_local_lock_timeout
-- For the rest of this transaction, give up on a lock after $1 (e.g. '500ms') instead of waiting for it.
SELECT set_config('lock_timeout', $1, true);

-- name: lock_routing_log_partitions
-- The lock routing_log_ensure_partitions() takes: retention and creation never run at the same time.
SELECT pg_advisory_xact_lock(210848524);

-- name: chain_floors_in_partition
-- Before a partition {partition} is dropped: its rows whose successor in their chain is not dropped with them (later
-- rows continue from their hashes), or whose predecessor is not (their prev_hash pins it), whole, for retention to
-- check before it vouches for them. {partition} is a quoted table name read from pg_class.
SELECT * FROM (
    SELECT d.*,
           NOT EXISTS (SELECT 1 FROM {partition} AS n WHERE n.chain_id = d.chain_id AND n.seq = d.seq + 1) AS next_apart,
           NOT EXISTS (SELECT 1 FROM {partition} AS p WHERE p.chain_id = d.chain_id AND p.seq = d.seq - 1) AS prev_apart
    FROM {partition} AS d
) AS candidate WHERE next_apart OR prev_apart;

-- name: record_chain_floor
-- A floor of chain_floors_in_partition, with its MAC (storage.log_row.mark_mac).
INSERT INTO routing_log_floor (chain_id, seq, hash, prev_hash, next_apart, prev_apart, mac)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (chain_id, seq) DO NOTHING;

-- name: insert_hold
-- A legal hold (migration 0017): $1 correlation_id, $2 object_id, $3 country_code, $4 party_id, $5 since, $6 until,
-- $7 reason, $8 who set it.
INSERT INTO routing_log_hold (correlation_id, object_id, country_code, party_id, since, until, reason, set_by)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
RETURNING *;

-- name: release_hold
-- A hold in force released by $2; none if there is no such hold, or it was released already.
UPDATE routing_log_hold SET released_by = $2, released_at = now()
WHERE id = $1 AND released_at IS NULL
RETURNING *;

-- name: hold_by_id
SELECT * FROM routing_log_hold WHERE id = $1;

-- name: list_holds
-- Every hold, those in force first, then released ones, newest first each.
SELECT * FROM routing_log_hold ORDER BY released_at IS NOT NULL, id DESC;

-- name: lock_holds
-- Retention, before it looks at the holds of a partition it drops: no hold is set until its transaction ends.
LOCK TABLE routing_log_hold IN SHARE MODE;

-- name: holds_keeping_partition
-- The holds in force that cover a row of the partition {partition} (a quoted table name read from pg_class).
SELECT h.id FROM routing_log_hold AS h
WHERE h.released_at IS NULL AND EXISTS (
    SELECT 1 FROM {partition} AS r
    WHERE (h.correlation_id IS NOT NULL AND r.correlation_id = h.correlation_id)
       OR (h.object_id IS NOT NULL AND r.object_id = h.object_id)
       OR (h.party_id IS NOT NULL AND r.received_at >= h.since AND r.received_at < h.until
           AND ((upper(r.from_country_code) = h.country_code AND upper(r.from_party_id) = h.party_id)
                OR (upper(r.to_country_code) = h.country_code AND upper(r.to_party_id) = h.party_id)))
)
ORDER BY h.id;

-- name: partition_rows
-- How many rows the partition {partition} holds (a dry run of retention says so).
SELECT count(*) FROM {partition};

-- name: record_dropped_partition
-- In retention's transaction, before the DROP of {partition} (a quoted name read from pg_class): its month ($1, $2,
-- $3) and its range of row ids (min and max: read from its primary key's index, not a scan).
INSERT INTO routing_log_dropped_partition (partition, received_from, received_before, first_id, last_id)
SELECT $1, $2, $3, min(id), max(id) FROM {partition};

-- name: dropped_partition_of_id
-- The partition retention dropped whose range of row ids holds $1, if any.
SELECT partition, received_from, received_before, first_id, last_id, dropped_at
FROM routing_log_dropped_partition
WHERE first_id <= $1 AND last_id >= $1
ORDER BY dropped_at DESC
LIMIT 1;

-- name: dropped_below_every_row
-- For a row id no row has: when retention dropped rows (its floors: a retention of before 0018 recorded no ranges),
-- first and last, if the id is below every row the log still has.
SELECT min(f.dropped_at) AS first_drop, max(f.dropped_at) AS last_drop
FROM routing_log_floor AS f
WHERE $1 < (SELECT min(id) FROM routing_log)
HAVING count(*) > 0;

-- name: recorded_secret_key_check
-- The check value of the secret key the database was set up with (storage.secret_key_check), NULL before the first.
SELECT value FROM secret_key_check;

-- name: record_secret_key_check
-- The first key's check value, unless one is recorded (meanwhile, by another process starting): NULL then.
INSERT INTO secret_key_check (value) VALUES ($1) ON CONFLICT (only_row) DO NOTHING RETURNING value;

-- name: audit_trail_head
-- What storage.secret_key_witnesses checks a key against, before the database's first check value of it: the audit
-- trail's head, its newest chained entry, and the routing log's newest row (unkeyed: of a chain of unkeyed hashes,
-- sealed at the upgrade to keyed ones or spooled by a hub before it, which tells no key). Each one step of an index.
SELECT unchained_upto, last_id, last_hash, mac FROM audit_trail_head;

-- name: newest_audit_trail_entry
SELECT id, at, actor_kind, actor_name, action, parameters::text AS parameters, prev_hash, hash
FROM audit_trail WHERE hash IS NOT NULL AND prev_hash IS NOT NULL ORDER BY id DESC LIMIT 1;

-- name: newest_routing_log_row
SELECT r.*, EXISTS (SELECT FROM routing_log_sealed_chain AS s WHERE s.chain_id = r.chain_id) AS unkeyed
FROM routing_log AS r ORDER BY r.received_at DESC, r.id DESC LIMIT 1;

-- name: grant_serving_role
-- What a role serving the hub may do (storage.serving_role; {role} and {audit_trail_ids} are quoted names): all it
-- held before revoked first, so that the grants are exactly these. The routing log, its amendments and the audit trail
-- are appended to, never changed or deleted; their heads (routing_log_chain, routing_log_sealed_chain,
-- audit_trail_head) move on as rows are appended, each MAC'd; a legal hold is released once (migration 0022's trigger).
-- What retention deletes and records (floors, dropped partitions and amendments, delivered ClientInfo changes, relayed
-- CDR URLs) is the owner's alone; so is every DDL, partitions created ahead included (routing_log_ensure_partitions
-- runs as its owner). A new table of a later migration is added here.
REVOKE ALL ON ALL TABLES IN SCHEMA {schema} FROM {role};
REVOKE ALL ON ALL SEQUENCES IN SCHEMA {schema} FROM {role};
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA {schema} FROM {role};
GRANT SELECT ON schema_migration, secret_key_check TO {role};  -- the owner records the key's check (migrate)
GRANT SELECT, INSERT, UPDATE ON platform, party_role, client_info_push TO {role};
GRANT SELECT, INSERT, UPDATE, DELETE ON platform_endpoint TO {role};
GRANT SELECT, INSERT, DELETE ON credentials_token, auditor TO {role};
GRANT SELECT, INSERT, UPDATE ON spent_token TO {role};
GRANT SELECT, INSERT ON relayed_location, routing_log, routing_log_amendment, audit_trail TO {role};
GRANT SELECT ON routing_log_floor, routing_log_amendment_dropped, routing_log_dropped_partition TO {role};
GRANT SELECT, INSERT, UPDATE (last_seq, last_hash, amendments) ON routing_log_chain TO {role};
GRANT SELECT, INSERT, UPDATE (last_seq, last_hash, mac, sealed_at) ON routing_log_sealed_chain TO {role};
GRANT SELECT, INSERT, UPDATE (last_id, last_hash, mac) ON audit_trail_head TO {role};  -- INSERT: a deleted head made again
GRANT SELECT, INSERT, UPDATE (released_by, released_at) ON routing_log_hold TO {role};
GRANT USAGE ON SEQUENCE routing_log_row_id, {audit_trail_ids} TO {role};
GRANT EXECUTE ON FUNCTION routing_log_ensure_partitions(integer) TO {role};

-- name: role_privileges
-- What role $1 may do to each table of the hub's schema (not the routing log's partitions, which it reaches through
-- routing_log only): the privileges it holds on the table, and the columns it may update where it may not update all.
SELECT c.relname AS table,
       array_remove(ARRAY[
           CASE WHEN has_table_privilege($1::name, c.oid, 'SELECT') THEN 'SELECT' END,
           CASE WHEN has_table_privilege($1::name, c.oid, 'INSERT') THEN 'INSERT' END,
           CASE WHEN has_table_privilege($1::name, c.oid, 'UPDATE') THEN 'UPDATE' END,
           CASE WHEN has_table_privilege($1::name, c.oid, 'DELETE') THEN 'DELETE' END,
           CASE WHEN has_table_privilege($1::name, c.oid, 'TRUNCATE') THEN 'TRUNCATE' END,
           CASE WHEN has_table_privilege($1::name, c.oid, 'REFERENCES') THEN 'REFERENCES' END,
           CASE WHEN has_table_privilege($1::name, c.oid, 'TRIGGER') THEN 'TRIGGER' END], NULL) AS privileges,
       ARRAY(SELECT a.attname::text FROM pg_attribute AS a
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
               AND NOT has_table_privilege($1::name, c.oid, 'UPDATE') AND has_column_privilege($1::name, c.oid, a.attnum, 'UPDATE')
             ORDER BY a.attnum) AS updates
FROM pg_class AS c
WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('r', 'p') AND NOT c.relispartition
ORDER BY c.relname;

-- name: serving_role_candidate
-- Role $1 (no row: there is none), and what would keep it from serving the hub: it owns the hub's tables (or is a
-- member of their owner), it is a superuser, or it may create objects in the hub's schema; the names the grants need.
SELECT r.rolname AS role, r.rolsuper AS superuser,
       pg_has_role($1::name, (SELECT relowner FROM pg_class WHERE oid = 'routing_log'::regclass), 'MEMBER') AS owner,
       has_schema_privilege($1::name, current_schema(), 'CREATE') AS creates, current_schema() AS schema,
       pg_get_serial_sequence('audit_trail', 'id') AS audit_trail_ids
FROM pg_roles AS r WHERE r.rolname = $1;

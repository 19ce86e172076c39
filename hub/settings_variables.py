"""The hub's settings as an operator sees them: each OCPI_HUB_* variable's name, default and meaning (hub.settings
reads them)."""

from __future__ import annotations

# name, default, meaning: the single source for `ocpi-hub --help` and the README table.
VARIABLES: tuple[tuple[str, str, str], ...] = (
    ("OCPI_HUB_DATABASE_URL", "(embedded)", "PostgreSQL URL; unset: an embedded PostgreSQL under the data dir"),
    (
        "OCPI_HUB_OWNER_DATABASE_URL",
        "(OCPI_HUB_DATABASE_URL)",
        "PostgreSQL URL of the role owning the hub's tables, for migrate, retention and grant-serving-role; set, the"
        " hub serves with OCPI_HUB_DATABASE_URL's role, which cannot change or delete the routing log",
    ),
    ("OCPI_HUB_REDIS_URL", "(embedded)", "Redis/Valkey URL; unset: an embedded Valkey under the data dir"),
    ("OCPI_HUB_DATA_DIR", "./.ocpi-hub", "where embedded servers, the admin token and the secret key live"),
    (
        "OCPI_HUB_PUBLIC_URL",
        "http://HOST:PORT",
        "base URL the hub advertises to parties (versions URL = this + /ocpi/versions)",
    ),
    ("OCPI_HUB_COUNTRY_CODE", "NL", "the hub's own OCPI country code (role HUB)"),
    ("OCPI_HUB_PARTY_ID", "HUB", "the hub's own OCPI party id (role HUB)"),
    ("OCPI_HUB_NAME", "ocpi-hub", "business name the hub reports in its credentials"),
    (
        "OCPI_HUB_ADMIN_TOKEN",
        "(generated)",
        "bearer token of the admin API, at least 32 characters; unset: generated once, kept in the data dir",
    ),
    (
        "OCPI_HUB_SECRET_KEY",
        "(generated)",
        "Fernet key encrypting party tokens at rest; unset: generated in the data dir",
    ),
    (
        "OCPI_HUB_METRICS_TOKEN",
        "(none)",
        "bearer token Prometheus must send for /metrics (it names every party); unset: /metrics is open",
    ),
    (
        "OCPI_HUB_FORWARD_TIMEOUT_S",
        "30",
        "seconds the hub waits for a party's whole answer (a forward: then 4002, a request waiting for a connection to "
        "the party included, which waits half of it at most, then 4000; a probe, a location"
        " sync page, a registration step: then failed), and for a request's body before answering 408",
    ),
    (
        "OCPI_HUB_PARTY_KEEP_ALIVE_S",
        "4",
        "seconds the hub reuses an idle connection to a party: below the 5 s after which uvicorn, Node.js and Apache"
        " close theirs, so no request (never sent twice) goes out on a connection the party is closing",
    ),
    (
        "OCPI_HUB_PARTY_CONNECTIONS",
        "64",
        "connections a hub process keeps at most to one party's server (host and port), for all callers; a calling"
        " platform with fewer than 2 in flight there takes one whenever one is free, beyond that only while it has"
        " fewer than half of them in flight and a quarter stay free (kept for the others), else its request waits",
    ),
    (
        "OCPI_HUB_MAX_BODY_BYTES",
        "10000000",
        "largest body the hub takes: a request's (larger: HTTP 413) or a party's answer (larger: OCPI 4000)",
    ),
    (
        "OCPI_HUB_KEEP_ALIVE_S",
        "75",
        "seconds an idle client connection stays open, the most a client may take to send a request's line and"
        " headers, and the most it may go without reading any of an answer: longer than the parties' HTTP clients and"
        " a load balancer in front keep theirs (often 60 s), so none sends a request on a connection the hub is"
        " closing",
    ),
    ("OCPI_HUB_LOG_MODE", "strict", "strict: a routing-log row is committed before the caller is answered; async: not"),
    (
        "OCPI_HUB_LOG_BODY_MAX_BYTES",
        "1048576",
        "bodies kept in the routing log are cut at this size (before a UTF-8 character it would split)",
    ),
    (
        "OCPI_HUB_LOG_PARTITIONS_AHEAD",
        "3",
        "months of routing-log partitions the hub creates ahead (at start and daily), at most 120",
    ),
    ("OCPI_HUB_SYNC_INTERVAL_S", "3600", "seconds between incremental pull syncs of every CPO's locations"),
    (
        "OCPI_HUB_CHECKPOINT_LOG_S",
        "3600",
        "seconds between the signed checkpoints of the routing log the hub writes to its log (routing_log_checkpoint),"
        " which log shipping keeps outside the hub; 0: none",
    ),
    (
        "OCPI_HUB_INVITATION_TTL_S",
        "1209600",
        "seconds an invitation's token A stays valid (14 days; an invitation's own expires_in_s or `invite"
        " --expires-in` overrides it); 0: never",
    ),
    (
        "OCPI_HUB_SYNC_CHECK_S",
        "10",
        "seconds between checks for CPOs never synced, and for eMSPs whose tokens and CPOs whose sessions were never"
        " pulled into the owner index (new, or Redis lost its data)",
    ),
    (
        "OCPI_HUB_PULL_PAGE_LIMIT",
        "1000",
        "tokens or sessions the hub asks for per page (limit) as it reads a party's Sender into the owner index (the"
        " party may send fewer): the most objects of a pull it holds in memory at a time",
    ),
    # 1,000 locations the size of the spec's example are about 1.2 MB of documents (storage.location_cache): 100,000,
    # far more than one CPO's network holds, are some 120 MB of them, without their indexes (bench/location_cache.py)
    (
        "OCPI_HUB_MAX_LOCATIONS_PER_CPO",
        "100000",
        "most locations of one CPO the location cache holds; past it the CPO's new ones are relayed but not cached,"
        " and GET All of its locations is forwarded to it",
    ),
    # the documents' bytes bound Redis as the count does not (MAX_DOCUMENT_BYTES, 1 MB: 100,000 such would be 100 GB):
    # 1 GiB is 100,000 locations of some 10 KB (a site of 20 EVSEs is about 8 KB; the spec's example 1.2 KB)
    (
        "OCPI_HUB_MAX_LOCATION_BYTES_PER_CPO",
        "1073741824",
        "most bytes of one CPO's location documents the location cache holds; past it the CPO's new locations are"
        " relayed but not cached, a location an update grows past it leaves the cache, and GET All of its locations"
        " is forwarded to it",
    ),
    # A hub URL (a paging Link's, a response_url's) is kept in Redis for a day (a result's 48 hours, up to 90 days):
    # some 600 bytes a page with a next Link; 1 GiB is over a million pages a day for one platform.
    (
        "OCPI_HUB_KEPT_URL_BYTES_PER_DAY",
        "1073741824",
        "most bytes of hub URLs (paging Links, response_url results) the hub keeps in Redis for one platform's"
        " requests per UTC day; past it its requests that need one are answered 4000 and not relayed, and its list"
        " requests are not forwarded until midnight UTC",
    ),
    ("OCPI_HUB_STILL_ALIVE_S", "300", "silence (s) after which the hub GETs a party's versions to see it is alive"),
    (
        "OCPI_HUB_OFFLINE_PROBE_S",
        "30",
        "seconds between probes of an OFFLINE party (and after a failed forward); also the first wait before fetching"
        " again the endpoints a rotation could not fetch, doubled after each failure, at most an hour",
    ),
    # A session may last days, its last PATCH (status COMPLETED, total_cost) comes after it ends, and every PUT or
    # PATCH relayed notes its owners again. A reservation is noted once, at its RESERVE_NOW (mod_commands:
    # expiry_date, "The Date/Time when this reservation ends"), and CANCEL_RESERVATION may come until then. 45 days:
    # an owner is found for 45 to 90 days, 90 being the longest the hub keeps a RESERVE_NOW's response_url
    # (routing.rewrite.MAX_CALLBACK_TTL_S); a reservation longer than 45 days may need OCPI-to to be cancelled.
    (
        "OCPI_HUB_OWNER_INDEX_PERIOD_S",
        "3888000",
        "seconds per period of the owner index of sessions and reservations (not of locations or tokens): open"
        " routing finds an owner for one to two periods after it last saw it; default 45 days",
    ),
    (
        "OCPI_HUB_REDIS_PREFIX",
        "ocpi-hub:",
        "prefix of every Redis key, so several hubs can share one Redis; without * ? [ ] or \\ (key patterns)",
    ),
    (
        "OCPI_HUB_PARTY_NETWORKS_ALLOWED",
        "(none)",
        "comma-separated CIDRs of non-public networks the hub may call parties in (e.g. 10.0.0.0/8, 127.0.0.1/32);"
        " unset: parties only at public addresses, never loopback, private, link-local or CGNAT",
    ),
    ("OCPI_HUB_LOG_LEVEL", "info", "debug, info, warning or error"),
)

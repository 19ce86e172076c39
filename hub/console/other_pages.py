"""The console's other pages: parties, traffic charts, chain verification; for the admin the audit trail and
invitations."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import msgspec
from litestar import Request, Response, get, post
from litestar.enums import RequestEncodingType
from litestar.exceptions import HTTPException
from litestar.params import Body
from litestar.response import Redirect, Template

from hub.admin.actors import record_action
from hub.admin.api import AdminError, InvitationIn, invite, invited, location_caches, true_or_false
from hub.admin.checkpoint import recorded_checkpoint
from hub.admin.stats import BUCKETS, compute_stats
from hub.admin.verify import recorded_heads, recorded_verify
from hub.checkpoint import NotHeads, Refused, saved_heads
from hub.console.auth import ADMIN_ONLY, actor
from hub.console.charts import Bucket, bar_chart, buckets_between
from hub.console.log_pages import party_choices
from hub.envelope import whole_number
from hub.export_manifest import public_key_info
from storage.log_search import BadFilter, check_range, is_row_id, parse_time
from storage.sql import QUERIES

AUDIT_PAGE = 100
NOT_A_PARTY = "not a party"  # the traffic page's group of the codes in requests' headers no party of the hub holds


@get("/console")
async def home() -> Redirect:
    return Redirect("/console/log", status_code=303)


@get("/console/parties")
async def parties_page(request: Request) -> Template:
    async with request.app.state.pool.acquire() as conn:
        rows = await conn.fetch(QUERIES["list_parties"], None)
    counts: dict[str, int] = defaultdict(int)
    for row in rows:
        counts[row["status"]] += 1
    caches = await location_caches(request.app.state.locations, rows)
    rows = [dict(row) | caches.get((row["country_code"].upper(), row["party_id"].upper()), {}) for row in rows]
    return Template("parties.html", context={"page": "parties", "actor": actor(request), "rows": rows,
                                             "counts": dict(counts), "now": datetime.now(UTC)})  # fmt: skip


@get("/console/stats")
async def stats_page(request: Request, bucket: str = "hour", party: str | None = None) -> Template:
    bucket = bucket if bucket in BUCKETS else "hour"
    params = {"bucket": bucket} | ({"party": party} if party else {})
    context: dict[str, Any] = {"page": "stats", "actor": actor(request), "bucket": bucket, "party": party or "",
                               "charts": [], "modules": [], "error": None}  # fmt: skip
    async with request.app.state.pool.acquire() as conn:
        try:
            result = await compute_stats(conn, dict(params))
        except AdminError as exc:
            context["error"] = exc.message
            return Template("stats.html", context=context, status_code=400)
        await record_action(
            conn, request.app.state.settings.audit_trail_key, actor(request), "stats", params | {"via": "console"}
        )
    step = timedelta(hours=1) if bucket == "hour" else timedelta(days=1)
    since = parse_time("since", result["since"])
    start = since.replace(minute=0, second=0, microsecond=0)
    if bucket == "day":
        start = start.replace(hour=0)
    span = buckets_between(start, datetime.now(UTC), step)
    per_party: dict[str, dict[datetime, Bucket]] = defaultdict(lambda: {b.start: Bucket(b.start) for b in span})
    # the worst hourly (daily) percentiles; the receivers' None until a bucket has one (none went to a party)
    totals: dict[str, dict[str, Any]] = defaultdict(lambda: {"sent": 0, "received": 0, "errors": 0, "p95": 0.0,
                                                             "p99": 0.0, "receiver_p95": None})  # fmt: skip
    modules: dict[str, dict[str, Any]] = defaultdict(lambda: {"messages": 0, "errors": 0, "p95": 0.0, "p99": 0.0,
                                                              "receiver_p95": None, "receiver_p99": None})  # fmt: skip
    settings = request.app.state.settings
    hub_party = f"{settings.country_code}-{settings.party_id}".upper()
    known = {*await party_choices(request), hub_party}
    claimed: set[str] = set()  # the codes of the requests' headers that name no party of the hub
    for item in result["items"]:
        name = item["party"].upper()
        if party and name != party.upper():
            continue  # the other side of the selected party's messages
        if name not in known and not party:
            # a refused request's headers may name anyone: counted, together, under what they are
            claimed.add(name)
            name = NOT_A_PARTY
        slot = per_party[name].get(item["bucket"])
        if slot is not None:
            slot.messages += item["messages"]
            slot.errors += item["errors"]
        total = totals[name]
        total[item["direction"]] += item["messages"]
        total["errors"] += item["errors"]
        total["p95"], total["p99"] = max(total["p95"], item["p95_ms"]), max(total["p99"], item["p99_ms"])
        if item["direction"] == "received":  # its own part as the receiver, not its counterparts'
            total["receiver_p95"] = _worst(total["receiver_p95"], item["receiver_p95_ms"])
        if party:
            module = modules[f"{item['module']} ({item['direction']})"]
            module["messages"] += item["messages"]
            module["errors"] += item["errors"]
            module["p95"], module["p99"] = max(module["p95"], item["p95_ms"]), max(module["p99"], item["p99_ms"])
            module["receiver_p95"] = _worst(module["receiver_p95"], item["receiver_p95_ms"])
            module["receiver_p99"] = _worst(module["receiver_p99"], item["receiver_p99_ms"])
    label_every, label_format = (4, "%H:%M") if bucket == "hour" else (5, "%d %b")
    for name in sorted(per_party, key=lambda name: (name == NOT_A_PARTY, name)):
        chart = bar_chart(list(per_party[name].values()), label_every, label_format, f"traffic of {name}")
        context["charts"].append({"party": name, "svg": chart, "totals": totals[name]})
    context["hub_party"], context["not_a_party"], context["claimed"] = hub_party, NOT_A_PARTY, sorted(claimed)
    context["modules"] = sorted(modules.items())
    context["span"] = "last 24 hours, per hour" if bucket == "hour" else "last 31 days, per day"
    return Template("stats.html", context=context)


def _worst(so_far: float | None, bucket: float | None) -> float | None:
    """The larger of two percentiles of receiver_ms, either of which is None where no row had one."""
    return bucket if so_far is None else so_far if bucket is None else max(so_far, bucket)


@get("/console/verify")
async def verify_page(request: Request, since: str | None = None, until: str | None = None,
                      run: str | None = None) -> Template:  # fmt: skip
    try:
        run_now = true_or_false("run", run)
    except AdminError as exc:  # "maybe" read Litestar's "Expected `bool`, got `str`"
        raise HTTPException(status_code=400, detail=exc.message) from None
    return await _verified(request, since or "", until or "", "", run_now)


@post("/console/verify", status_code=200)
async def verify_with_heads(
    request: Request, data: Annotated[dict[str, str], Body(media_type=RequestEncodingType.URL_ENCODED)]
) -> Template:
    """The same, with heads or a checkpoint saved earlier (a download of /console/heads or /console/checkpoint) pasted
    in: each of their rows still there (a checkpoint's signature checked first)."""
    heads = data.get("heads", "").strip()
    return await _verified(request, data.get("since", ""), data.get("until", ""), heads, True, heads_given=True)


async def _verified(request: Request, since: str, until: str, heads: str, run: bool,
                    heads_given: bool = False) -> Template:  # fmt: skip
    context: dict[str, Any] = {"page": "verify", "actor": actor(request), "since": since, "until": until,
                               "heads": heads, "result": None, "error": None,
                               "signing": public_key_info(request.app.state.settings.export_signing_key)}  # fmt: skip
    if not run:
        return Template("verify.html", context=context)
    if heads_given and not heads:  # a plain verify here would read as one against heads
        context["error"] = "No heads were pasted: nothing was checked. Paste heads or a checkpoint, or use Verify now."
        return Template("verify.html", context=context, status_code=400)
    try:
        start = parse_time("since", since) if since else None
        end = parse_time("until", until) if until else None
        check_range(start, end)
        saved = saved_heads(heads.encode(), request.app.state.settings.export_signing_key) if heads else None
    except BadFilter as exc:
        context["error"] = str(exc)
        return Template("verify.html", context=context, status_code=400)
    except NotHeads as exc:
        context["error"] = f"These are not heads as the download gives them, nor a checkpoint: {exc}"
        return Template("verify.html", context=context, status_code=400)
    except Refused as exc:
        context["error"] = f"What was pasted: {exc}"
        return Template("verify.html", context=context, status_code=400)
    given = {k: v for k, v in (("since", since), ("until", until)) if v} | {"via": "console"}
    async with request.app.state.pool.acquire() as conn:
        key = request.app.state.settings.routing_log_key
        context["result"] = await recorded_verify(conn, key, actor(request), given, (start, end), saved)
    context["checked_at"] = datetime.now(UTC)
    return Template("verify.html", context=context)


@get("/console/heads")
async def heads_download(request: Request) -> Response[bytes]:
    """Every chain's head now, as a file to keep outside the database and paste into the verify page later."""
    async with request.app.state.pool.acquire() as conn:
        heads = await recorded_heads(
            conn, request.app.state.settings.audit_trail_key, actor(request), {"via": "console"}
        )
    name = f"ocpi-hub-heads-{heads.taken_at:%Y-%m-%dT%H%M%SZ}.json"
    return Response(msgspec.json.format(msgspec.json.encode(heads)), media_type="application/json",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})  # fmt: skip


@get("/console/checkpoint")
async def checkpoint_download(request: Request) -> Response[bytes]:
    """A signed checkpoint now, as a file to keep outside the hub and paste into the verify page later."""
    async with request.app.state.pool.acquire() as conn:
        checkpoint = await recorded_checkpoint(conn, request.app.state.settings, actor(request), {"via": "console"})
    name = f"ocpi-hub-checkpoint-{checkpoint['taken_at'][:19].replace(':', '')}Z.json"
    return Response(msgspec.json.format(msgspec.json.encode(checkpoint)), media_type="application/json",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})  # fmt: skip


@get("/console/audit")
async def audit_page(request: Request, cursor: str | None = None) -> Template:
    """Who did what on the routing log, through the API or this console (to auditors too, like the API's trail)."""
    position = whole_number(cursor) if cursor else None
    if cursor and (position is None or not is_row_id(position)):  # as the API's trail says it ("abc": Litestar's)
        raise HTTPException(status_code=400, detail=f"cursor is not one this API handed out, got {cursor[:40]!r}")
    async with request.app.state.pool.acquire() as conn:
        rows = await conn.fetch(QUERIES["audit_trail"], position, AUDIT_PAGE + 1)
    entries = [dict(row) | {"parameters": json.loads(row["parameters"])} for row in rows[:AUDIT_PAGE]]
    older = f"/console/audit?cursor={entries[-1]['id']}" if len(rows) > AUDIT_PAGE else None
    return Template("audit.html", context={"page": "audit", "actor": actor(request), "entries": entries,
                                           "older": older, "first": "/console/audit" if cursor else None})  # fmt: skip


@get("/console/invite", opt={ADMIN_ONLY: True})
async def invite_page(request: Request) -> Template:
    return Template("invite.html", context={"page": "invite", "actor": actor(request), "form": {}, "error": None,
                                            "invitation": None})  # fmt: skip


@post("/console/invite", status_code=200, opt={ADMIN_ONLY: True})
async def invite_party(
    request: Request, data: Annotated[dict[str, str], Body(media_type=RequestEncodingType.URL_ENCODED)]
) -> Template:
    context: dict[str, Any] = {"page": "invite", "actor": actor(request), "form": data, "error": None,
                               "invitation": None}  # fmt: skip
    state = request.app.state
    try:
        wanted = msgspec.convert({"name": data.get("name", "").strip(), "roles": [
            {"role": data.get("role", ""), "country_code": data.get("country_code", "").strip(),
             "party_id": data.get("party_id", "").strip()}]}, InvitationIn)  # fmt: skip
        async with state.pool.acquire() as conn, conn.transaction():
            context["invitation"] = await invite(conn, state.settings, wanted)
            await record_action(
                conn,
                request.app.state.settings.audit_trail_key,
                actor(request),
                "invite",
                invited(context["invitation"]) | {"via": "console"},
            )
    except msgspec.ValidationError as exc:
        context["error"] = f"Not a valid invitation: {exc}"
    except AdminError as exc:
        context["error"] = exc.message
    if context["invitation"] is not None:
        await state.directory.changed()
        context["form"] = {}
    return Template("invite.html", context=context, status_code=400 if context["error"] else 200)

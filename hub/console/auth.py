"""Signing in to the console with an admin or auditor token, signing out, and the check before every page."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

import structlog
from litestar import Request, Response, get, post
from litestar.enums import RequestEncodingType
from litestar.params import Body
from litestar.response import Redirect, Template

from hub.admin.actors import ADMIN, Actor, record_action, resolve_actor
from hub.console.headers import foreign_origin
from hub.console.session import COOKIE, LIFETIME_S, expired_cookie, session_cookie, signed_out_key, token_of

log = structlog.get_logger()

SIGN_IN = "/console/sign-in"
PUBLIC = frozenset({SIGN_IN, "/console/sign-out"})
# Pages that carry opt={ADMIN_ONLY: True} refuse an auditor (403) once it is signed in, before their id or form is read.
ADMIN_ONLY = "admin_only"


def _secure(request: Request) -> bool:
    return request.app.state.settings.public_url.startswith("https://")


def _next(target: str | None) -> str:
    """Where to go after signing in: a console page of this hub only, never another site."""
    if target and target.startswith("/console/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/console/log"


async def require_actor(request: Request) -> Response[Any] | None:
    """Before every console page: the signed-in actor in request.state.actor, or a redirect to the sign-in page; a
    form posted from another site is refused (403), an auditor on an admin's page too (before Litestar reads the
    page's path, query and form, which it does after this hook)."""
    state = request.app.state
    origin = request.headers.get("origin")
    if request.method == "POST" and foreign_origin(origin, request.headers.get("host"), state.settings.public_url):
        message = (
            f"This form was sent from {(origin or '')[:100]}, another site than this console: the hub takes console "
            "forms from its own pages only. Open the console and try again there."
        )
        log.warning("console_form_from_another_site", path=request.scope["path"], origin=(origin or "")[:100])
        context = {"actor": None, "heading": "Refused", "message": message}
        return Template("problem.html", context=context, status_code=403)
    if request.scope["path"] in PUBLIC or request.scope["path"].startswith("/console/static/"):
        return None
    cookie = request.cookies.get(COOKIE)
    token = token_of(state.settings.secret_key, cookie)
    if token is not None and cookie and await state.redis.exists(signed_out_key(state.settings.redis_prefix, cookie)):
        token = None  # signed out: the cookie opens nothing any more, wherever it is sent from
    actor = await resolve_actor(state.pool, state.settings.admin_token, token)
    if actor is None:
        here = request.scope["path"] + (f"?{request.scope['query_string'].decode()}" if request.scope["query_string"]
                                         else "")  # fmt: skip
        redirect = Redirect(f"{SIGN_IN}?next={quote(here, safe='')}", status_code=303)
        if token is not None:  # a token that no longer works (auditor removed, admin token changed)
            redirect.set_cookie(expired_cookie(_secure(request)))
        return redirect
    request.scope["state"]["actor"] = actor
    if request.route_handler.opt.get(ADMIN_ONLY):
        require_admin(request)
    return None


def actor(request: Request) -> Actor:
    found: Actor = request.scope["state"]["actor"]
    return found


def require_admin(request: Request) -> None:
    if actor(request).kind != ADMIN:
        raise PermissionError(
            "this page is for the hub's admin; auditors can read the log, parties, traffic and the audit trail"
        )


@get(SIGN_IN)
async def sign_in_page(request: Request, next: str | None = None) -> Template:
    return Template("sign_in.html", context={"next": _next(next), "error": None, "actor": None})


@post(SIGN_IN, status_code=303)
async def sign_in(
    request: Request, data: Annotated[dict[str, str], Body(media_type=RequestEncodingType.URL_ENCODED)]
) -> Response[Any]:
    state = request.app.state
    token = (data.get("token") or "").strip()
    who = await resolve_actor(state.pool, state.settings.admin_token, token)
    if who is None:
        context = {"next": _next(data.get("next")), "actor": None,
                   "error": "That is not an admin or auditor token of this hub."}  # fmt: skip
        return Template("sign_in.html", context=context, status_code=401)
    async with state.pool.acquire() as conn:
        await record_action(conn, state.settings.audit_trail_key, who, "console_sign_in", {"via": "console"})
    redirect = Redirect(_next(data.get("next")), status_code=303)
    redirect.set_cookie(session_cookie(state.settings.secret_key, token, _secure(request)))
    return redirect


@post("/console/sign-out", status_code=303)
async def sign_out(request: Request) -> Redirect:
    state, cookie = request.app.state, request.cookies.get(COOKIE)
    if cookie and token_of(state.settings.secret_key, cookie) is not None:  # one the hub set, still working
        await state.redis.set(signed_out_key(state.settings.redis_prefix, cookie), 1, ex=LIFETIME_S)
    redirect = Redirect(SIGN_IN, status_code=303)
    redirect.set_cookie(expired_cookie(_secure(request)))
    return redirect

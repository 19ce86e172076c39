"""The web console at /console: server-rendered pages over the auditor API's queries, signed in with a token."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from litestar import HttpMethod, Request, Response, Router, route
from litestar.exceptions import HTTPException
from litestar.handlers import HTTPRouteHandler
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Template
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig

from hub.envelope import http_error_message, logged_unexpected
from hub.errors import OUTAGES, OcpiError

HERE = Path(__file__).parent


def template_config() -> TemplateConfig[JinjaTemplateEngine]:
    from hub.console.views import register

    return TemplateConfig(directory=HERE / "templates", engine=JinjaTemplateEngine, engine_callback=register)


def problem_page(request: Request, exc: Exception) -> Response[Any]:
    """An error on a console page is a page too, not the OCPI envelope the rest of the hub answers with, whatever
    raised it (hub.app.render_error)."""
    if isinstance(exc, PermissionError):
        heading, message, status = "Not for auditors", str(exc), 403
    elif isinstance(exc, HTTPException):
        heading, message, status = "Cannot show this page", http_error_message(request, exc), exc.status_code
    elif isinstance(exc, OcpiError):  # raised below Litestar, as it reads the body: one that did not arrive in time
        heading, message, status = "Cannot take this request", exc.message, max(exc.http_status, 400)
    else:
        status, message = logged_unexpected(request, exc)
        if isinstance(exc, OUTAGES):
            heading = "The hub's database or Redis is away"
        else:
            heading, message = "Something went wrong", "An internal error of the hub; it has been logged."
    context = {"actor": request.scope["state"].get("actor"), "heading": heading, "message": message}
    return Template("problem.html", context=context, status_code=status)


def console_router() -> list[Router]:
    from hub.console import auth, log_pages, other_pages, platform_actions

    handlers = [
        auth.sign_in_page, auth.sign_in, auth.sign_out, other_pages.home, log_pages.log_page,
        log_pages.export_download, log_pages.message_page, other_pages.parties_page, other_pages.stats_page,
        other_pages.verify_page, other_pages.verify_with_heads, other_pages.heads_download,
        other_pages.checkpoint_download, other_pages.audit_page, other_pages.invite_page, other_pages.invite_party,
        log_pages.export_manifest_download,
        platform_actions.confirm_page, platform_actions.act,
    ]  # fmt: skip
    pages = Router(
        path="/",
        route_handlers=[*_options_of_pages_with_several_methods(handlers), *handlers],  # first: see there
        before_request=auth.require_actor,
        include_in_schema=False,
    )  # fmt: skip
    static = create_static_files_router(path="/console/static", directories=[HERE / "static"], include_in_schema=False)
    return [pages, static]


def _options_of_pages_with_several_methods(handlers: list[HTTPRouteHandler]) -> list[HTTPRouteHandler]:
    """OPTIONS of each page with a GET and a POST handler, its Allow naming both: Litestar 2's own OPTIONS names the
    methods of the first handler registered for the path alone (fixed in Litestar 3), and keeps it unless an OPTIONS
    handler of the path was registered before any other."""
    methods: dict[str, set[str]] = {}
    for handler in handlers:
        for path in handler.paths:
            methods.setdefault(path, set()).update(handler.http_methods)
    return [_options(path, ", ".join(sorted(taken | {"OPTIONS"}))) for path, taken in methods.items() if len(taken) > 1]


def _options(path: str, allow: str) -> HTTPRouteHandler:
    def options() -> Response[None]:
        return Response(None, status_code=204, headers={"Allow": allow})  # as Litestar's own OPTIONS answers

    return route(path, http_method=[HttpMethod.OPTIONS], sync_to_thread=False)(options)

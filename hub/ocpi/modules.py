"""The functional modules' endpoints (SENDER and RECEIVER of every module the hub lists in its version details).

Routing between parties is not implemented yet: every request here is authenticated and answered with a clear
OCPI hub error, so a connecting party learns what works today instead of meeting a 404.
"""

from __future__ import annotations

from litestar import Request, Response, route
from litestar.enums import HttpMethod

from hub.envelope import ocpi_response
from hub.errors import HubError, NotFound
from hub.ocpi.versions import RELAYED_MODULES

_METHODS: list[HttpMethod] = [HttpMethod.GET, HttpMethod.POST, HttpMethod.PUT, HttpMethod.PATCH, HttpMethod.DELETE]


def _check(interface: str, module: str) -> None:
    if interface == "sender" and module == "hubclientinfo":
        raise HubError("the hub's hubclientinfo list is not available yet")
    if interface not in ("sender", "receiver") or module not in RELAYED_MODULES:
        raise NotFound(f"the hub has no {interface} interface for module {module!r}")
    raise HubError(f"routing of {module} ({interface.upper()} interface) is not available on this hub yet")


@route("/ocpi/2.2.1/{interface:str}/{module:str}", http_method=_METHODS)
async def module_root(request: Request, interface: str, module: str) -> Response[bytes]:
    _check(interface, module)
    return ocpi_response(None)


@route("/ocpi/2.2.1/{interface:str}/{module:str}/{rest:path}", http_method=_METHODS)
async def module_object(request: Request, interface: str, module: str, rest: str) -> Response[bytes]:
    _check(interface, module)
    return ocpi_response(None)

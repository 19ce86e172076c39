"""The hub's versions and 2.2.1 version details endpoints (version_information_endpoint.asciidoc)."""

from __future__ import annotations

from litestar import Request, Response, get

from hub.envelope import ocpi_response
from hub.ocpi.wire import Endpoint, Version, VersionDetails
from hub.settings import Settings

# The modules the hub relays on both interfaces; hubclientinfo it serves itself as SENDER.
RELAYED_MODULES = ("cdrs", "chargingprofiles", "commands", "locations", "sessions", "tariffs", "tokens")


def hub_endpoints(settings: Settings) -> list[Endpoint]:
    base = settings.details_url
    # version_information_endpoint.asciidoc: "advised to send SENDER as the InterfaceRole for one's own credentials"
    endpoints = [
        Endpoint("credentials", "SENDER", f"{base}/credentials"),
        Endpoint("hubclientinfo", "SENDER", f"{base}/sender/hubclientinfo"),
    ]
    for module in RELAYED_MODULES:
        endpoints.append(Endpoint(module, "SENDER", f"{base}/sender/{module}"))
        endpoints.append(Endpoint(module, "RECEIVER", f"{base}/receiver/{module}"))
    return endpoints


@get("/ocpi/versions")
async def versions(request: Request) -> Response[bytes]:
    settings: Settings = request.app.state.settings
    return ocpi_response([Version("2.2.1", settings.details_url)])


@get("/ocpi/2.2.1")
async def version_details(request: Request) -> Response[bytes]:
    return ocpi_response(VersionDetails("2.2.1", hub_endpoints(request.app.state.settings)))

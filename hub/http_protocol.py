"""uvicorn's HTTP/1.1 protocol (httptools), answering bytes that do not parse as HTTP with an OCPI envelope.

uvicorn answers those itself, before any of the hub's code runs, with a text/plain 400 that a party's OCPI client
cannot read. status_codes.asciidoc: errors of the transport layer get an HTTP error code "with the same envelope".
"""

from __future__ import annotations

import sys

import msgspec
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from hub.envelope import ocpi_timestamp
from hub.errors import ClientError
from hub.ocpi.wire import Envelope

_encoder = msgspec.json.Encoder()


class OcpiHttpToolsProtocol(HttpToolsProtocol):
    def send_400_response(self, msg: str) -> None:
        # uvicorn calls this from its `except httptools.HttpParserError`: the parser's own words say what was wrong.
        parser_error = sys.exc_info()[1]
        detail = str(parser_error) if parser_error is not None and str(parser_error) else msg.rstrip(".")
        body = _encoder.encode(Envelope(status_code=ClientError.status_code, timestamp=ocpi_timestamp(),
                                        status_message=f"not a valid HTTP/1.1 request: {detail}"))  # fmt: skip
        head = [b"HTTP/1.1 400 Bad Request\r\n"]
        head += [b"%s: %s\r\n" % (name, value) for name, value in self.server_state.default_headers]
        head += [b"content-type: application/json\r\n", b"content-length: %d\r\n" % len(body),
                 b"connection: close\r\n\r\n"]  # fmt: skip
        self.transport.write(b"".join(head) + body)
        self.transport.close()

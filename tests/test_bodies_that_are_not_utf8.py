"""A logged body that is not UTF-8 (a binary body, a gzipped one the hub refused, a receiver's binary answer) comes
back byte for byte: from the auditor API and the export as kind bytes in base64, in the console escaped and said to be
binary. Found by an auditor's walkthrough: they came back as text with U+FFFD in place of their bytes, so the bytes the
row's hash covers could not be had, and the gzipped request's row did not keep its Content-Encoding."""

from __future__ import annotations

import gzip
import json
import uuid

from tests.conftest import Db, Hub
from tests.parties import Party
from tests.test_routing import party_key


def test_the_row_of_a_gzipped_request_keeps_its_content_encoding_and_content_type(
    hub: Hub, cpo_and_emsp: tuple[Party, Party], db: Db
) -> None:
    # Only the row's error named the coding: the headers an auditor reads the refused bytes by were not kept.
    cpo, emsp = cpo_and_emsp
    (cc, pid), to = party_key(cpo), party_key(emsp)
    request_id = str(uuid.uuid4())
    answer = cpo.call(hub.base, "PUT", f"receiver/locations/{cc}/{pid}/LOC1", to=to, content=gzip.compress(b"{}"),
                      headers={"Content-Encoding": "gzip", "Content-Type": "application/json",
                               "X-Request-ID": request_id})  # fmt: skip
    assert answer.status_code == 415, answer.text
    kept = db.run(db.fetchval("SELECT request_headers FROM routing_log WHERE request_id = $1", request_id))
    assert json.loads(kept).items() >= {"content-encoding": "gzip", "content-type": "application/json"}.items(), kept

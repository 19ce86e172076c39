"""An export checks outside the hub: its manifest (format, filters, when, who, rows, digest, heads) is signed with the
hub's Ed25519 key, and `ocpi-hub verify-export` checks file and manifest with no database and no secret."""

from __future__ import annotations

import base64
import csv
import io
import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from storage.secrets import export_signing_key
from tests.conftest import ROOT, Hub, Services, unique_party_id
from tests.log_rows import varied_entries, write

WINDOW = {"since": "2002-03-01T00:00:00Z", "until": "2002-03-02T00:00:00Z"}


@pytest.fixture(scope="module")
def party(services: Services) -> str:
    """A party with 12 rows of its own in WINDOW."""
    party = ("QE", unique_party_id())
    write(services.database_url, varied_entries(datetime(2002, 3, 1, tzinfo=UTC), 12, [party], uuid.uuid4().hex))
    return f"{party[0]}-{party[1]}"


def _verify(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """verify-export as an auditor runs it: no OCPI_HUB_* variable, no database, no secret."""
    return subprocess.run([sys.executable, "-m", "hub.cli", "verify-export", *map(str, args)], env={"PATH": "/usr/bin"},
                          cwd=ROOT, capture_output=True, text=True, timeout=60)  # fmt: skip


def _export(admin: httpx.Client, params: dict[str, str], path: Path) -> httpx.Response:
    answer = admin.get("/admin/api/routing-log/export", params=params)
    assert answer.status_code == 200, answer.text
    path.write_bytes(answer.content)
    return answer


def _public_key(client: httpx.Client, path: Path) -> dict[str, str]:
    published = client.get("/admin/api/routing-log/export/public-key").json()
    path.write_text(published["public_key_pem"])
    return published


def test_an_ndjson_export_verifies_without_the_hub_and_says_what_it_is(hub: Hub, party: str, tmp_path: Path) -> None:
    with hub.admin() as admin:
        answer = _export(admin, WINDOW | {"party": party}, tmp_path / "export.ndjson")
        published = _public_key(admin, tmp_path / "hub.pem")
        heads = admin.get("/admin/api/routing-log/heads").json()
    checked = _verify(tmp_path / "export.ndjson", "--public-key", tmp_path / "hub.pem")
    assert checked.returncode == 0, checked.stderr
    assert "OK: 12 rows" in checked.stderr and published["fingerprint"] in checked.stderr
    manifest = json.loads(checked.stdout)
    assert manifest["filters"] == WINDOW | {"party": party} and manifest["format"] == "ndjson"
    assert manifest["rows"] == 12 and manifest["exported_by"] == {"kind": "admin", "name": "admin"}
    assert manifest["export_id"] == answer.headers["x-export-id"] and manifest["export_id"] in answer.headers[
        "content-disposition"]  # fmt: skip
    assert manifest["key_fingerprint"] == published["fingerprint"]
    assert {c["chain_id"] for c in manifest["heads"]["chains"]} <= {c["chain_id"] for c in heads["chains"]}
    # the key given as the base64 the API shows, and no key at all (then the signer is said to be unchecked)
    assert _verify(tmp_path / "export.ndjson", "--public-key", published["public_key"]).returncode == 0
    unkeyed = _verify(tmp_path / "export.ndjson")
    assert unkeyed.returncode == 0 and "the signer was not checked" in unkeyed.stderr


def test_a_byte_changed_in_a_row_fails_on_the_digest(hub: Hub, party: str, tmp_path: Path) -> None:
    with hub.admin() as admin:
        _export(admin, WINDOW | {"party": party}, tmp_path / "export.ndjson")
        _public_key(admin, tmp_path / "hub.pem")
    data = bytearray((tmp_path / "export.ndjson").read_bytes())
    at = data.index(b'"http_status":') + len(b'"http_status":')
    data[at] = ord("5") if data[at] != ord("5") else ord("4")
    (tmp_path / "export.ndjson").write_bytes(data)
    checked = _verify(tmp_path / "export.ndjson", "--public-key", tmp_path / "hub.pem")
    assert checked.returncode == 1 and "FAILED: digest" in checked.stderr and "signature" not in checked.stderr


def test_filters_edited_in_the_manifest_fail_on_the_signature(hub: Hub, party: str, tmp_path: Path) -> None:
    with hub.admin() as admin:
        _export(admin, WINDOW | {"party": party}, tmp_path / "export.ndjson")
        _public_key(admin, tmp_path / "hub.pem")
    *rows, last = (tmp_path / "export.ndjson").read_bytes().splitlines(keepends=True)
    trailer = json.loads(last)
    trailer["manifest"]["filters"]["party"] = "NL-XYZ"
    (tmp_path / "export.ndjson").write_bytes(b"".join(rows) + json.dumps(trailer).encode() + b"\n")
    checked = _verify(tmp_path / "export.ndjson", "--public-key", tmp_path / "hub.pem")
    assert checked.returncode == 1 and "FAILED: signature" in checked.stderr and "digest" not in checked.stderr


def test_another_public_key_fails(hub: Hub, party: str, tmp_path: Path) -> None:
    with hub.admin() as admin:
        _export(admin, WINDOW | {"party": party}, tmp_path / "export.ndjson")
    other = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    checked = _verify(tmp_path / "export.ndjson", "--public-key", base64.b64encode(other).decode())
    assert checked.returncode == 1 and "FAILED: key" in checked.stderr
    unreadable = _verify(tmp_path / "export.ndjson", "--public-key", "not a key")
    assert unreadable.returncode == 2 and "--public-key" in unreadable.stderr


def test_a_csv_export_stays_csv_and_its_manifest_download_checks_it(hub: Hub, party: str, tmp_path: Path) -> None:
    with hub.admin() as admin:
        answer = _export(admin, WINDOW | {"party": party, "format": "csv"}, tmp_path / "export.csv")
        _public_key(admin, tmp_path / "hub.pem")
    with hub.admin() as admin:
        fetched = admin.get(f"/admin/api/routing-log/export/manifests/{answer.headers['x-export-id']}")
        unknown = admin.get(f"/admin/api/routing-log/export/manifests/{'0' * 32}")
    assert fetched.status_code == 200 and unknown.status_code == 404, fetched.text + unknown.text
    (tmp_path / "export.manifest.json").write_bytes(fetched.content)
    assert len(list(csv.DictReader(io.StringIO(answer.text)))) == 12 == fetched.json()["manifest"]["rows"]
    manifest_args = ("--manifest", tmp_path / "export.manifest.json", "--public-key", tmp_path / "hub.pem")
    checked = _verify(tmp_path / "export.csv", *manifest_args)
    assert checked.returncode == 0, checked.stderr
    assert json.loads(checked.stdout)["format"] == "csv"
    (tmp_path / "export.csv").write_bytes(answer.content.replace(b"QE", b"QF", 1))
    changed = _verify(tmp_path / "export.csv", *manifest_args)
    assert changed.returncode == 1 and "FAILED: digest" in changed.stderr
    alone = _verify(tmp_path / "export.csv")
    assert alone.returncode == 2 and "no manifest line" in alone.stderr


def test_the_signing_key_follows_the_secret_key_and_is_published_to_auditors(hub: Hub) -> None:
    one, again, other = export_signing_key("a"), export_signing_key("a"), export_signing_key("b")
    raw = one.public_key().public_bytes_raw()
    assert raw == again.public_key().public_bytes_raw() != other.public_key().public_bytes_raw()
    with hub.admin() as admin:
        published = admin.get("/admin/api/routing-log/export/public-key").json()
    public = Ed25519PublicKey.from_public_bytes(base64.b64decode(published["public_key"]))
    assert published["algorithm"] == "Ed25519" and published["fingerprint"].startswith("SHA256:")
    derived = export_signing_key(hub.env["OCPI_HUB_SECRET_KEY"])  # the hub's own: derived, nothing configured
    assert public.public_bytes_raw() == derived.public_key().public_bytes_raw()


def test_the_console_shows_the_key_and_its_csv_export_has_a_manifest_to_download(
    hub: Hub, party: str, tmp_path: Path
) -> None:
    with httpx.Client(base_url=hub.base, timeout=30) as console, hub.admin() as admin:
        assert console.post("/console/sign-in", data={"token": hub.admin_token}).status_code == 303
        verify_page = console.get("/console/verify").text
        exported = console.get("/console/log/export", params=WINDOW | {"party": party, "format": "csv"})
        export_id = exported.headers["x-export-id"]
        fetched = console.get(f"/console/log/export/manifests/{export_id}")
        missing = console.get(f"/console/log/export/manifests/{'0' * 32}")
        published = _public_key(admin, tmp_path / "hub.pem")
    assert published["fingerprint"] in verify_page
    assert exported.status_code == fetched.status_code == 200 and missing.status_code == 404
    assert export_id in exported.headers["content-disposition"] and fetched.json()["manifest"]["via"] == "console"
    (tmp_path / "export.csv").write_bytes(exported.content)
    (tmp_path / "manifest.json").write_bytes(fetched.content)
    checked = _verify(tmp_path / "export.csv", "--manifest", tmp_path / "manifest.json", "--public-key",
                      tmp_path / "hub.pem")  # fmt: skip
    assert checked.returncode == 0, checked.stderr

"""A routing-log row's or a platform's id in a URL of the admin API or the console names it in the digits 0-9 alone:
int() also reads other scripts' digits ("٥٢"), a sign and underscores, each of which named a row or platform that an
id of letters ("abc") did not. So do a search cursor's row id and retention's --keep."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime

import httpx
import pytest

from storage.log_cursor import decode_cursor, encode_cursor
from storage.log_search import BadFilter
from storage.partitions import parse_keep
from tests.conftest import Hub, Services, unique_party_id
from tests.log_rows import varied_entries, write
from tests.parties import token_header

ARABIC_INDIC = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")


def _not_in_ascii_digits(number: int) -> list[str]:
    """number written as int() reads it, but not in the digits 0-9 alone."""
    return [str(number).translate(ARABIC_INDIC), f"+{number}", f"0_{number}"]


def test_a_row_id_not_in_the_digits_0_to_9_names_no_row_as_letters_do(hub: Hub, services: Services) -> None:
    tag = uuid.uuid4().hex[:8]
    [entry] = varied_entries(datetime.now(UTC), 1, [("QX", unique_party_id())], tag)
    write(services.database_url, [entry])
    with hub.admin() as admin:
        [row] = admin.get("/admin/api/routing-log", params={"request_id": entry.request_id}).json()["items"]
        assert admin.get(f"/admin/api/routing-log/{row['id']}").status_code == 200
        letters = admin.get("/admin/api/routing-log/abc")
        assert (letters.status_code, letters.json()) == (
            404,
            {"error": "no such endpoint: GET /admin/api/routing-log/abc"},
        )
        for written in _not_in_ascii_digits(row["id"]):
            answer = admin.get(f"/admin/api/routing-log/{written}")
            expected = {"error": f"no such endpoint: GET /admin/api/routing-log/{written}"}
            assert (answer.status_code, answer.json()) == (404, expected), written
    with httpx.Client(base_url=hub.base, timeout=30) as console:
        assert console.post("/console/sign-in", data={"token": hub.admin_token}).status_code == 303
        assert console.get(f"/console/log/{row['id']}").status_code == 200
        for written in _not_in_ascii_digits(row["id"]):
            page = console.get(f"/console/log/{written}")
            assert page.status_code == 404 and "Cannot show this page" in page.text, (written, page.text)


def test_a_platform_id_not_in_the_digits_0_to_9_takes_no_platform_off_the_hub(hub: Hub) -> None:
    invitation = hub.invite("Stays on", ("CPO", "NL", unique_party_id()))
    platform_id = invitation["platform_id"]
    with hub.admin() as admin:
        for written in _not_in_ascii_digits(platform_id):
            answers = [admin.delete(f"/admin/api/parties/{written}"),
                       admin.post(f"/admin/api/parties/{written}/credentials"),
                       admin.post(f"/admin/api/parties/{written}/endpoints")]  # fmt: skip
            for answer in answers:
                assert answer.status_code == 404 and "no such endpoint" in answer.json()["error"], answer.text
    with httpx.Client(base_url=hub.base, timeout=30) as console:
        assert console.post("/console/sign-in", data={"token": hub.admin_token}).status_code == 303
        for written in _not_in_ascii_digits(platform_id):
            page = console.get(f"/console/parties/{written}/take-off")
            acted = console.post(f"/console/parties/{written}/take-off", data={"confirm": "yes"})
            assert page.status_code == acted.status_code == 404, (written, page.text, acted.text)
    # still invited: its token A still opens the versions
    assert httpx.get(hub.versions_url, headers=token_header(invitation["token_a"])).status_code == 200


def test_a_cursor_whose_row_id_is_not_in_the_digits_0_to_9_is_not_one_the_api_handed_out() -> None:
    at = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
    assert decode_cursor(encode_cursor(at, 52)) == (at, 52)
    for row_id in _not_in_ascii_digits(52):
        forged = base64.urlsafe_b64encode(f"{at.isoformat()}|{row_id}".encode()).decode().rstrip("=")
        with pytest.raises(BadFilter, match="cursor is not one this API handed out"):
            decode_cursor(forged)


def test_retention_keeps_days_written_in_the_digits_0_to_9_alone() -> None:
    assert parse_keep("400d").days == 400
    for days in _not_in_ascii_digits(400):
        with pytest.raises(ValueError):
            parse_keep(f"{days}d")

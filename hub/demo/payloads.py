"""OCPI 2.2.1 objects the demo parties send, shaped after the spec's examples/ (location_example.json,
token_example_2_full_rfid.json, session_example_1_simple_start.json, cdr_example.json, ...), with current times."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _at(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Site:
    """A charging location of a demo CPO: where it is and its EVSEs."""

    location_id: str
    name: str
    address: str
    city: str
    postal_code: str
    country: str
    latitude: str
    longitude: str
    evse_uids: tuple[str, ...]
    time_zone: str


def location(country_code: str, party_id: str, site: Site, operator: str) -> dict[str, Any]:
    stamp = now()
    evses = []
    for n, uid in enumerate(site.evse_uids, start=1):
        connectors = [
            {"id": "1", "standard": "IEC_62196_T2", "format": "SOCKET", "power_type": "AC_3_PHASE",
             "max_voltage": 230, "max_amperage": 32, "max_electric_power": 22000, "tariff_ids": ["AC22"],
             "last_updated": stamp},
        ]  # fmt: skip
        if n % 2 == 0:
            connectors.append(
                {"id": "2", "standard": "IEC_62196_T2_COMBO", "format": "CABLE", "power_type": "DC",
                 "max_voltage": 920, "max_amperage": 200, "max_electric_power": 150000, "tariff_ids": ["DC150"],
                 "last_updated": stamp}
            )  # fmt: skip
        evses.append({
            "uid": uid, "evse_id": f"{country_code}*{party_id}*E{uid}", "status": "AVAILABLE",
            "capabilities": ["RFID_READER", "REMOTE_START_STOP_CAPABLE", "RESERVABLE"],
            "connectors": connectors, "physical_reference": str(n), "floor_level": "0", "last_updated": stamp,
        })  # fmt: skip
    return {
        "country_code": country_code, "party_id": party_id, "id": site.location_id, "publish": True,
        "name": site.name, "address": site.address, "city": site.city, "postal_code": site.postal_code,
        "country": site.country, "coordinates": {"latitude": site.latitude, "longitude": site.longitude},
        "parking_type": "ON_STREET", "evses": evses, "operator": {"name": operator},
        "time_zone": site.time_zone, "last_updated": stamp,
    }  # fmt: skip


def evse_status(status: str) -> dict[str, Any]:
    """location_patch_example_status.json"""
    return {"status": status, "last_updated": now()}


def token(country_code: str, party_id: str, uid: str, contract_id: str, issuer: str) -> dict[str, Any]:
    """token_example_2_full_rfid.json"""
    return {
        "country_code": country_code, "party_id": party_id, "uid": uid, "type": "RFID",
        "contract_id": contract_id, "visual_number": f"{contract_id[:5]}-{uid[-4:]}", "issuer": issuer,
        "group_id": contract_id[:8], "valid": True, "whitelist": "ALLOWED", "language": "en",
        "default_profile_type": "REGULAR", "last_updated": now(),
    }  # fmt: skip


def cdr_token(tok: dict[str, Any]) -> dict[str, Any]:
    return {key: tok[key] for key in ("country_code", "party_id", "uid", "type", "contract_id")}


def location_references(location_id: str, evse_uid: str) -> dict[str, Any]:
    return {"location_id": location_id, "evse_uids": [evse_uid]}


def authorization_info(tok: dict[str, Any], location_id: str | None, reference: str) -> dict[str, Any]:
    info: dict[str, Any] = {"allowed": "ALLOWED", "token": tok, "authorization_reference": reference}
    if location_id:
        info["location"] = {"location_id": location_id}
    return info


def start_session(response_url: str, tok: dict[str, Any], location_id: str, evse_uid: str, ref: str) -> dict[str, Any]:
    """mod_commands.asciidoc, StartSession object"""
    return {"response_url": response_url, "token": tok, "location_id": location_id, "evse_uid": evse_uid,
            "connector_id": "1", "authorization_reference": ref}  # fmt: skip


def command_response(result: str, timeout: int = 30) -> dict[str, Any]:
    return {"result": result, "timeout": timeout}


def command_result(result: str) -> dict[str, Any]:
    return {"result": result}


def session(
    country_code: str, party_id: str, session_id: str, started: datetime, tok: dict[str, Any], location_id: str,
    evse_uid: str, ref: str,
) -> dict[str, Any]:  # fmt: skip
    """session_example_1_simple_start.json"""
    return {
        "country_code": country_code, "party_id": party_id, "id": session_id, "start_date_time": _at(started),
        "kwh": 0.0, "cdr_token": cdr_token(tok), "auth_method": "COMMAND", "authorization_reference": ref,
        "location_id": location_id, "evse_uid": evse_uid, "connector_id": "1", "currency": "EUR",
        "total_cost": {"excl_vat": 0.0, "incl_vat": 0.0}, "status": "ACTIVE", "last_updated": now(),
    }  # fmt: skip


def session_progress(started: datetime, kwh: float, price_per_kwh: float) -> dict[str, Any]:
    """session_patch_example_charging_period.json"""
    cost = round(kwh * price_per_kwh, 2)
    return {
        "kwh": kwh,
        "charging_periods": [{"start_date_time": _at(started), "dimensions": [{"type": "ENERGY", "volume": kwh}],
                              "tariff_id": "AC22"}],
        "total_cost": {"excl_vat": cost, "incl_vat": round(cost * 1.21, 2)},
        "last_updated": now(),
    }  # fmt: skip


def session_end(ended: datetime) -> dict[str, Any]:
    return {"status": "COMPLETED", "end_date_time": _at(ended), "last_updated": now()}


def cdr(
    country_code: str, party_id: str, cdr_id: str, sess: dict[str, Any], site: Site, kwh: float,
    price_per_kwh: float, minutes: int,
) -> dict[str, Any]:  # fmt: skip
    """cdr_example.json"""
    started = datetime.fromisoformat(sess["start_date_time"].replace("Z", "+00:00"))
    ended = started + timedelta(minutes=minutes)
    energy_cost = round(kwh * price_per_kwh, 2)
    hours = round(minutes / 60, 3)
    tariff = {
        "country_code": country_code, "party_id": party_id, "id": "AC22", "currency": "EUR",
        "elements": [{"price_components": [{"type": "ENERGY", "price": price_per_kwh, "vat": 21.0, "step_size": 1}]}],
        "last_updated": now(),
    }  # fmt: skip
    return {
        "country_code": country_code, "party_id": party_id, "id": cdr_id, "start_date_time": _at(started),
        "end_date_time": _at(ended), "session_id": sess["id"], "cdr_token": sess["cdr_token"],
        "auth_method": "COMMAND", "authorization_reference": sess.get("authorization_reference"),
        "cdr_location": {
            "id": site.location_id, "name": site.name, "address": site.address, "city": site.city,
            "postal_code": site.postal_code, "country": site.country,
            "coordinates": {"latitude": site.latitude, "longitude": site.longitude},
            "evse_uid": sess["evse_uid"], "evse_id": f"{country_code}*{party_id}*E{sess['evse_uid']}",
            "connector_id": "1", "connector_standard": "IEC_62196_T2", "connector_format": "SOCKET",
            "connector_power_type": "AC_3_PHASE",
        },
        "currency": "EUR", "tariffs": [tariff],
        "charging_periods": [{"start_date_time": _at(started), "dimensions": [{"type": "ENERGY", "volume": kwh}],
                              "tariff_id": "AC22"}],
        "total_cost": {"excl_vat": energy_cost, "incl_vat": round(energy_cost * 1.21, 2)},
        "total_energy": kwh, "total_time": hours,
        "total_energy_cost": {"excl_vat": energy_cost, "incl_vat": round(energy_cost * 1.21, 2)},
        "last_updated": now(),
    }  # fmt: skip

"""Checkpoints of the routing log: every chain's head and the audit trail's, signed, to keep outside the hub.

A checkpoint is the heads (storage.log_verify.Heads: taken_at, chains, each with the id of its head's row) with the
audit trail's last entry, the hub's identity and who took it, signed like an export's manifest (hub.export_manifest:
Ed25519 over canonical(checkpoint), the key storage.secrets.export_signing_key). Given back to verify, its signature is
checked first, against this hub's key: a checkpoint changed since, or signed by another key, checks nothing.
`ocpi-hub verify-checkpoint` checks the signature alone, on any machine, with the public key.
"""

from __future__ import annotations

import base64
import json
import sys
import uuid
from pathlib import Path
from typing import Annotated, Any

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from hub.export_manifest import Unreadable, canonical, fingerprint, raw_public_key, read_public_key, signed
from storage.log_verify import Heads

CHECKPOINT_VERSION = 1
_HASH = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}\Z")]


class TrailHead(msgspec.Struct, frozen=True):
    entry_id: int
    hash: _HASH


class Checkpoint(Heads, kw_only=True):
    """Heads with what makes them a checkpoint; a verify given one checks the audit trail up to its entry too."""

    version: int
    checkpoint_id: str
    hub: str
    audit_trail: TrailHead | None
    key_fingerprint: str

    def named(self) -> str:
        return f"checkpoint {self.checkpoint_id} taken at {self.taken_at.isoformat()}"


def checkpoint_of(
    heads: list[dict[str, Any]],
    trail: tuple[int, bytes] | None,
    taken_at: str,
    about: dict[str, Any],
    key: Ed25519PrivateKey,
) -> dict[str, Any]:
    """The signed checkpoint: heads (each chain's chain_id, last_seq, last_hash, amendments, row_id), the audit trail's
    last entry (id, hash), when, and about: the hub (hub, hub_party, hub_name) and who took it (taken_by)."""
    unsigned = {
        "version": CHECKPOINT_VERSION,
        "checkpoint_id": uuid.uuid4().hex,
        "taken_at": taken_at,
        "chains": heads,
        "audit_trail": {"entry_id": trail[0], "hash": trail[1].hex()} if trail else None,
    }
    return signed(unsigned | about, key)


class Refused(ValueError):
    """Heads or a checkpoint given to verify that it cannot use: nothing was checked. The message says why."""


class NotHeads(Refused):
    """Neither heads nor a checkpoint: the message says what the decoder found wrong."""


def _document(data: bytes) -> Any:
    """The JSON given; a line of the hub's log carrying a checkpoint ({"event": ..., "checkpoint": {...}}): that."""
    try:
        document = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise NotHeads(f"not JSON: {exc}") from None
    if isinstance(document, dict) and isinstance(document.get("checkpoint"), dict):
        return document["checkpoint"]
    return document


def is_checkpoint(document: Any) -> bool:
    return isinstance(document, dict) and ("checkpoint_id" in document or "signature" in document)


def signature_problem(checkpoint: dict[str, Any], public_key: bytes | None) -> str | None:
    """Why the checkpoint is not one signed by public_key (None: by the key it names), or None when it is."""
    public, signature_text = checkpoint.get("public_key"), checkpoint.get("signature")
    try:
        if not isinstance(public, str) or not isinstance(signature_text, str):
            raise ValueError
        signer = base64.b64decode(public, validate=True)
        signature = base64.b64decode(signature_text, validate=True)
    except ValueError:
        return "its public_key or signature is missing or not base64: it is not a checkpoint as the hub signs them"
    if public_key is not None and signer != public_key:
        return (f"it was signed by the key {fingerprint(signer)}, not by {fingerprint(public_key)}: a checkpoint of "
                "another hub, or of this one before its OCPI_HUB_SECRET_KEY was changed")  # fmt: skip
    try:
        Ed25519PublicKey.from_public_bytes(public_key or signer).verify(signature, canonical(checkpoint))
    except (InvalidSignature, ValueError):
        return "its signature does not verify: it was changed after the hub signed it"
    return None


def saved_heads(data: bytes, key: Ed25519PrivateKey, checkpoint_only: bool = False) -> Heads:
    """What verify is given to check the log against: heads (GET /admin/api/routing-log/heads), or a checkpoint, whose
    signature must be this hub's (key). Refused says why neither, or why not the checkpoint."""
    document = _document(data)
    if not is_checkpoint(document):
        if checkpoint_only:
            raise Refused("not a checkpoint (no checkpoint_id, no signature): heads are given with --heads")
        try:
            return msgspec.convert(document, Heads)
        except msgspec.ValidationError as exc:
            raise NotHeads(str(exc)) from None
    if problem := signature_problem(document, raw_public_key(key.public_key())):
        raise Refused(f"the checkpoint is refused, nothing was checked: {problem}")
    try:
        return msgspec.convert(document, Checkpoint)
    except msgspec.ValidationError as exc:
        raise Refused(f"the checkpoint's signature verifies, but it is not one this hub reads: {exc}") from None


def verify_checkpoint(path: Path, public_key: str | None) -> int:
    """ocpi-hub verify-checkpoint: 0 the file is a checkpoint the key signed, 1 it is not (why on stderr), 2 nothing was
    checked (the file or the key cannot be read, or it is no checkpoint). The checkpoint on stdout, as JSON."""
    try:
        key = read_public_key(public_key) if public_key else None
        document = _document(path.read_bytes())
    except Unreadable as exc:
        print(f"ocpi-hub: verify-checkpoint: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"ocpi-hub: verify-checkpoint: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except Refused as exc:
        print(f"ocpi-hub: verify-checkpoint: {path}: {exc}", file=sys.stderr)
        return 2
    if not is_checkpoint(document):
        print(f"ocpi-hub: verify-checkpoint: {path} is no checkpoint (no checkpoint_id, no signature)", file=sys.stderr)
        return 2
    print(json.dumps(document, indent=2, sort_keys=True))
    if problem := signature_problem(document, key):
        print(f"ocpi-hub: verify-checkpoint: FAILED: {problem}", file=sys.stderr)
        return 1
    chains = document.get("chains")
    print(f"ocpi-hub: verify-checkpoint: OK: checkpoint {document.get('checkpoint_id')} of {document.get('hub')}, "
          f"taken at {document.get('taken_at')}, {len(chains) if isinstance(chains, list) else '?'} chains, signed by "
          f"{document.get('key_fingerprint')}", file=sys.stderr)  # fmt: skip
    if key is None:
        print(
            "ocpi-hub: verify-checkpoint: the signer was not checked: compare that fingerprint with the hub's "
            "published one (GET /admin/api/routing-log/export/public-key), or give --public-key",
            file=sys.stderr,
        )
    return 0

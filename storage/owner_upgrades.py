"""What a hub before periods left in the owner index, taken over: its one hash per module without expiry.

Such a hub kept the owners of sessions, session receivers and reservations in `owners:{module}` for ever; this version
keeps them per period (storage.owner_index) and reads no other hash. The hash is merged into the current period's at
start, which an upgrade needs, and once a period, for what a hub of the old version still running wrote since (a
rolling upgrade). Such a hub writes it unfenced, and has no cleanup of departed parties (storage.departed): so the
take-over keeps only the owners on the hub, merged by the owner index's script fenced by the directory's generation,
as its notes are.
"""

from __future__ import annotations

import secrets

import redis.asyncio as redis
import structlog
from redis.commands.core import AsyncScript

from storage.directory import Directory, DirectoryCache

log = structlog.get_logger()

_MERGE_CHUNK = 1000
_MERGE_TRIES = 5  # a chunk refused as the directory changes that often meanwhile is given up (a hint, for a period)

# KEYS: a module's owners hash as a hub before periods kept it, a key of this process's own. ARGV: ms to keep what is
# taken over. Returns 1 if there was one to take over. Atomic: of hubs starting at once, one takes the hash over, and a
# hub of the old version still writing it (a rolling upgrade) loses nothing.
_TAKE_OVER = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('RENAME', KEYS[1], KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return 1
"""


async def take_over(client: redis.Redis, module: str, old: str, current: str, kept_ms: int, add_owners: AsyncScript,
                    generation_key: str, directory: DirectoryCache | None) -> None:  # fmt: skip
    """Merge the module's hash of a hub before periods (old) into the current period's (current, kept kept_ms more), a
    chunk at a time, not blocking Redis, by the owner index's script that adds owners (add_owners): given the process's
    directory, only the owners it holds, while it is in the generation they were found in (DirectoryCache.fence)."""
    taken = f"{old}:taken-over:{secrets.token_urlsafe(18)}"
    if not await client.register_script(_TAKE_OVER)(keys=[old, taken], args=[kept_ms]):
        return
    cursor, dropped = 0, 0
    while True:
        cursor, entries = await client.hscan(taken, cursor, count=_MERGE_CHUNK)
        assert isinstance(entries, dict)  # fields and values, as no_values was not asked for
        noted = [(_text(object_id), owner) for object_id, owners in entries.items()
                 for owner in _text(owners).split(",")]  # fmt: skip
        dropped += await _merge(noted, add_owners, [generation_key, current], kept_ms, directory)
        if not cursor:
            break
    await client.unlink(taken)
    log.info("owner_index_taken_over", module=module, dropped=dropped)


async def _merge(noted: list[tuple[str, str]], add_owners: AsyncScript, keys: list[str], kept_ms: int,
                 directory: DirectoryCache | None) -> int:  # fmt: skip
    """Owners (object id, CC-PID) added to the current period's hash (keys: the generation's, the hash) by add_owners,
    but those of parties not on the hub; returns how many were dropped."""
    # Filtered here, not swept by the departed cleanup: old hubs write this hash unfenced, also after any cleanup.
    for _ in range(_MERGE_TRIES):
        on_hub, generation = directory.fence() if directory else (None, "")
        kept = [x for object_id, owner in noted if on_hub is None or _held(on_hub, owner) for x in (object_id, owner)]
        if not kept or await add_owners(keys=keys, args=[generation, kept_ms, *kept]) != -1:
            return len(noted) - len(kept) // 2
        if directory:  # the directory changed since it was read: again, as it is now
            await directory.catch_up()
    return len(noted)


def _held(directory: Directory, owner: str) -> bool:
    """Whether a registered platform holds the party (CC-PID): of a departed one, gone or still in its cleanup, what a
    hub of the old version noted is dropped; of a party id registered again, kept, as the cleanup keeps it."""
    country, _, party = owner.partition("-")
    platform = directory.parties.get((country.upper(), party.upper()))
    return platform is not None and platform.state == "REGISTERED"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value

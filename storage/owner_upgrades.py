"""What a hub before periods left in the owner index, taken over: its one hash per module without expiry.

Such a hub kept the owners of sessions, session receivers and reservations in `owners:{module}` for ever; this version
keeps them per period (storage.owner_index). The hash becomes the current period's, or is merged into it, at start,
which an upgrade needs, and once a period, for what a hub of the old version still running wrote since (a rolling
upgrade). Not fenced by the directory (storage.departed): it moves entries that are there already, which the periods
then expire.
"""

from __future__ import annotations

import secrets

import redis.asyncio as redis
import structlog
from redis.commands.core import AsyncScript

log = structlog.get_logger()

_MERGE_CHUNK = 1000

# KEYS: a module's owners hash as a hub before periods kept it, the current period's, a key of this process's own.
# ARGV: ms to keep what is taken over. Returns 0: nothing to take over, 1: it is now the current period's hash,
# 2: moved to the process's own key, to be merged into the current period's. Atomic: of hubs starting at once, one
# takes the hash over, and a hub of the old version still writing it (a rolling upgrade) loses nothing.
_TAKE_OVER = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local into = KEYS[3]
if redis.call('EXISTS', KEYS[2]) == 0 then
  into = KEYS[2]
end
redis.call('RENAME', KEYS[1], into)
redis.call('PEXPIRE', into, ARGV[1])
if into == KEYS[2] then
  return 1
end
return 2
"""


async def take_over(client: redis.Redis, module: str, old: str, current: str, kept_ms: int, add_owners: AsyncScript,
                    generation_key: str) -> None:  # fmt: skip
    """Move the module's hash of a hub before periods (old) into the current period's (current, kept kept_ms more):
    renamed if that has no owners yet, else merged into it a chunk at a time, not blocking Redis, by the owner index's
    script that adds owners (add_owners, unguarded: no generation, only the directory's generation key)."""
    taken = f"{old}:taken-over:{secrets.token_urlsafe(18)}"
    how = await client.register_script(_TAKE_OVER)(keys=[old, current, taken], args=[kept_ms])
    if how == 2:
        cursor = 0
        while True:
            cursor, entries = await client.hscan(taken, cursor, count=_MERGE_CHUNK)
            assert isinstance(entries, dict)  # fields and values, as no_values was not asked for
            args = [x for object_id, owners in entries.items() for owner in _text(owners).split(",")
                    for x in (_text(object_id), owner)]  # fmt: skip
            if args:
                await add_owners(keys=[generation_key, current], args=["", kept_ms, *args])
            if not cursor:
                break
        await client.unlink(taken)
    if how:
        log.info("owner_index_taken_over", module=module, merged=how == 2)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value

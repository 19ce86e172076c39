"""Redis bytes per relayed token for publish_allowed_to: storage.publish_tokens against a first design.

    python -m bench.publish_tokens [--tokens 20000] [--per-group 2]

Writes --tokens tokens of ten eMSPs three ways (uid + issuer; + visual_number; + visual_number + group_id, --per-group
tokens to a group, a card and its key fob by default) into a throwaway key prefix, once as the hub writes them now
(storage.publish_tokens's write script, TOKENS_PER_SCRIPT a call) and once as a first design did (every
combination of a token's fields a PublishToken entry can set, up to 14 keys, in `owners:publish-tokens`, and a JSON
record in `token-fields`; its writer is copied here), and prints MEMORY USAGE (SAMPLES 0: every field counted) of
each hash divided by the tokens, side by side, and how long a write script call held Redis. Uses OCPI_HUB_REDIS_URL
(default redis://127.0.0.1:6379/0); the keys are deleted afterwards. `owners:tokens` (uid -> owners, for open routing,
about 77 B a token) is written by both and not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import time
from itertools import product

import redis

from storage.directory import GENERATION_KEY
from storage.owner_index import TOKENS_PER_SCRIPT
from storage.publish_tokens import WRITE_LUA, Sent, index_keys, token_args

PROFILES = ("uid + issuer", "+ visual_number", "+ visual_number + group_id")


def tokens(count: int, profile: int, per_group: int) -> list[tuple[str, str, str, Sent]]:
    """(owner, uid, type, fields) of --tokens tokens: RFID cards of ten eMSPs, with more fields by profile."""
    made = []
    for n in range(count):
        owner = f"NL-E{n % 10:02d}"
        fields = Sent(visual_number=None, issuer=f"Energy Provider {owner}", group_id=None)
        if profile >= 1:
            fields.visual_number = f"{owner}-C{n:08d}-{n % 10}"
        if profile >= 2:
            fields.group_id = f"G{n // 10 // per_group:09d}"  # the owner's tokens, per_group at a time
        made.append((owner, f"{0x04A2B3C4000000 + n:014X}", "RFID", fields))
    return made


def write_now(client: redis.Redis, prefix: str, made: list[tuple[str, str, str, Sent]]) -> float:
    """As the hub writes them; returns the longest script call, in ms."""
    write, longest = client.register_script(WRITE_LUA), 0.0
    keys = [f"{prefix}{GENERATION_KEY}", *index_keys(prefix)]  # unguarded by the directory: '' for its generation
    args = [x for owner, uid, type_, fields in made for x in token_args(owner, uid, type_, [(fields, True)])]
    for start in range(0, len(args), 5 * TOKENS_PER_SCRIPT):
        began = time.perf_counter()
        write(keys=keys, args=["", *args[start : start + 5 * TOKENS_PER_SCRIPT]])
        longest = max(longest, (time.perf_counter() - began) * 1000)
    return longest


def write_before(client: redis.Redis, prefix: str, made: list[tuple[str, str, str, Sent]]) -> None:
    """As the format before storage.publish_tokens's wrote them (its token_keys, identity and write_known)."""
    owners: dict[str, list[str]] = {}
    records = {}
    for owner, uid, type_, fields in made:
        group_id = fields.group_id.upper() if fields.group_id else None
        choices = ((None, x) if x else (None,) for x in (uid.upper(), fields.visual_number, fields.issuer, group_id))
        for u, v, i, g in product(*choices):
            if u or v or g:
                key = json.dumps([u, type_, v, i, g], separators=(",", ":"))
                if owner not in owners.setdefault(key, []):
                    owners[key].append(owner)
        identity = json.dumps([owner, uid, type_], separators=(",", ":"))
        records[identity] = json.dumps([fields.visual_number, fields.issuer, fields.group_id], separators=(",", ":"))
    combinations = {key: ",".join(found) for key, found in owners.items()}
    for name, mapping in ((f"{prefix}owners:publish-tokens", combinations), (f"{prefix}token-fields", records)):
        items = list(mapping.items())
        for start in range(0, len(items), 5000):
            client.hset(name, mapping=dict(items[start : start + 5000]))


def bytes_per_token(client: redis.Redis, keys: list[str], count: int) -> list[float]:
    return [(client.memory_usage(key, samples=0) or 0) / count for key in keys]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=20_000)
    parser.add_argument("--per-group", type=int, default=2)
    args = parser.parse_args()
    client = redis.Redis.from_url(os.environ.get("OCPI_HUB_REDIS_URL", "redis://127.0.0.1:6379/0"))
    info = client.info("server")
    print(f"{args.tokens:,} tokens, {args.per_group} a group, Redis {info['redis_version']}; bytes per token")
    print(f"{'':28} {'before: combinations':>20} {'records':>8} {'total':>6}   "
          f"{'now: records':>12} {'visual':>6} {'groups':>6} {'total':>6}  {'longest write':>13}")  # fmt: skip
    for profile, name in enumerate(PROFILES):
        made = tokens(args.tokens, profile, args.per_group)
        prefix = f"bench-publish-{secrets.token_hex(4)}:"
        try:
            write_before(client, prefix, made)
            before = bytes_per_token(client, [f"{prefix}owners:publish-tokens", f"{prefix}token-fields"], len(made))
            longest = write_now(client, prefix, made)
            now = bytes_per_token(client, index_keys(prefix), len(made))
        finally:
            client.delete(f"{prefix}owners:publish-tokens", f"{prefix}token-fields", *index_keys(prefix))
        print(f"{name:28} {before[0]:20.0f} {before[1]:8.0f} {sum(before):6.0f}   "
              f"{now[0]:12.0f} {now[1]:6.0f} {now[2]:6.0f} {sum(now):6.0f}  {longest:10.1f} ms")  # fmt: skip


if __name__ == "__main__":
    main()

"""Lua scripts: loaded once from ``lua/*.lua``, run by EVALSHA.

A NOSCRIPT reply (Redis restarted, failed over, or a new cluster primary) loads the
script and runs the call once more; that is safe because NOSCRIPT means the script
did not run. Inside pipelines the same holds per command: only the commands that got
NOSCRIPT are sent again.

We do not use redis-py's ``register_script``: inside a pipeline it adds a SCRIPT
EXISTS round trip to every execute, and redis-py's cluster pipeline refuses
``evalsha()`` by name, while ``execute_command("EVALSHA", ...)`` is routed by key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

from redis.exceptions import NoScriptError, ResponseError

if TYPE_CHECKING:
    from .connection import Client, Pipeline

__all__ = ["Call", "Script", "execute_calls", "queue", "run", "script"]

Arg = str | bytes | int | float


@dataclass(frozen=True, slots=True)
class Script:
    """One Lua file: its name, source and SHA1."""

    name: str
    source: str
    sha: str


@cache
def script(name: str) -> Script:
    """The script ``lua/<name>.lua`` (read once per process)."""
    source = resources.files(__package__).joinpath("lua", f"{name}.lua").read_text("utf-8")
    return Script(name, source, hashlib.sha1(source.encode()).hexdigest())


@dataclass(frozen=True, slots=True)
class Call:
    """One script invocation, to be queued on a pipeline."""

    script: Script
    keys: Sequence[str]
    args: Sequence[Arg]


async def _load(client: Client, s: Script) -> None:
    # On a cluster client, SCRIPT LOAD goes to every primary.
    await client.script_load(s.source)


async def run(client: Client, s: Script, keys: Sequence[str], args: Sequence[Arg]) -> Any:
    """EVALSHA ``s``; on NOSCRIPT load it and run once more."""
    try:
        return await client.execute_command("EVALSHA", s.sha, len(keys), *keys, *args)
    except NoScriptError:
        await _load(client, s)
        return await client.execute_command("EVALSHA", s.sha, len(keys), *keys, *args)


def queue(pipe: Pipeline, call: Call) -> None:
    """Queue ``call`` on ``pipe`` as a raw EVALSHA (routed by key on a cluster)."""
    pipe.execute_command("EVALSHA", call.script.sha, len(call.keys), *call.keys, *call.args)


async def execute_calls(client: Client, calls: Sequence[Call], *, wait_replicas: int = 0,
                        wait_ms: int = 0) -> list[Any]:
    """Run ``calls`` in one non-transactional pipeline; results (or exceptions) in order.

    Commands that hit NOSCRIPT are rerun after loading their scripts; any other error
    is returned in its slot, for the caller to translate. With ``wait_replicas`` the
    pipeline ends with WAIT on the same connection (single node only), and a reply
    slot that says how many replicas confirmed is appended to the results.
    """
    results = await _pipeline(client, calls, wait_replicas, wait_ms)
    missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
    if missing:
        for s in {calls[i].script for i in missing}:
            await _load(client, s)
        retried = await _pipeline(client, [calls[i] for i in missing], wait_replicas, wait_ms)
        if wait_replicas:
            results[-1] = retried.pop()
        for i, r in zip(missing, retried, strict=True):
            results[i] = r
    return results


async def _pipeline(client: Client, calls: Sequence[Call], wait_replicas: int = 0, wait_ms: int = 0) -> list[Any]:
    if len(calls) == 1 and not wait_replicas:  # no pipeline object for the common case
        c = calls[0]
        try:
            return [await client.execute_command("EVALSHA", c.script.sha, len(c.keys), *c.keys, *c.args)]
        except ResponseError as exc:  # NOSCRIPT included: same contract as the pipeline
            return [exc]
    pipe = client.pipeline(transaction=False)
    for c in calls:
        queue(pipe, c)
    if wait_replicas:
        pipe.execute_command("WAIT", wait_replicas, wait_ms)
    return list(await pipe.execute(raise_on_error=False))

"""Lua scripts: loaded once from ``lua/*.lua``, run by EVALSHA.

Every script's reply is a table whose first element is its status; exactly one parser
per script (:mod:`redcurrent.replies`) turns it into a typed result or error.

A NOSCRIPT reply (Redis restarted, failed over, or a new cluster primary) loads the
script and runs the call once more; that is safe because NOSCRIPT means the script
did not run. Inside pipelines the same holds per command: only the commands that got
NOSCRIPT are sent again.

We do not use redis-py's ``register_script``: inside a pipeline it adds a SCRIPT
EXISTS round trip to every execute, and redis-py's cluster pipeline refuses
``evalsha()`` by name, while ``execute_command("EVALSHA", ...)`` is routed by key.

On a cluster we route script calls ourselves (:func:`_cluster_calls`): one pipeline per
node, on one connection of that node, so that

* a failed node makes the slot map be read again (redis-py's cluster pipeline does not,
  with its retries off: a failed-over partition was never written again);
* an ASK redirection sends ASKING and the call on the same connection (redis-py sends
  them as two commands from the node's pool, which may pick two connections: the call
  then meets MOVED back, and after 16 rounds "TTL exhausted");
* TRYAGAIN (a multi-key script while its slot's keys are being moved) comes back to the
  caller, which retries with backoff until the move ends;
* ``WAIT`` can close the pipeline of the node that stored the writes (acks="replica").
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

from redis.asyncio import RedisCluster
from redis.asyncio.cluster import ClusterNode, PipelineCommand
from redis.exceptions import AskError, MovedError, NoScriptError, ResponseError

from .connection import CONNECTION_ERRORS, refresh_slots

if TYPE_CHECKING:
    from .connection import Client, Pipeline

__all__ = ["Call", "Command", "Executed", "Script", "execute", "execute_calls", "queue", "run", "script"]

Arg = str | bytes | int | float
_REDIRECTS = 5  # MOVED/ASK/NOSCRIPT rounds one call may take within one execute


@dataclass(frozen=True, slots=True)
class Script:
    """One Lua file: its name, source and SHA1."""

    name: str
    source: str
    sha: str


def _lua(name: str) -> str:
    return resources.files(__package__).joinpath("lua", f"{name}.lua").read_text("utf-8")


@cache
def script(name: str) -> Script:
    """The script ``lua/<name>.lua`` (read once per process), after ``lua/_prelude.lua``:
    the helpers every script may use live once, in one file, and each script is still
    one EVALSHA. The script's own text comes last, so its contract opens what it adds."""
    source = _lua("_prelude") + _lua(name)
    return Script(name, source, hashlib.sha1(source.encode()).hexdigest())


@dataclass(frozen=True, slots=True)
class Call:
    """One script invocation, to be queued on a pipeline."""

    script: Script
    keys: Sequence[str]
    args: Sequence[Arg]


@dataclass(frozen=True, slots=True)
class Command:
    """One plain command (``args`` starts with its name) that may ride in the same
    pipelines as script calls, routed by ``keys[0]`` on a cluster. Its reply is returned
    raw (``raw=True`` tells redis-py's response callback to leave it alone where it
    has one, as for ``SET ... GET``)."""

    keys: Sequence[str]
    args: Sequence[Arg]


Op = Call | Command


def _command(op: Op) -> tuple[Arg, ...]:
    if isinstance(op, Command):
        return tuple(op.args)
    return ("EVALSHA", op.script.sha, len(op.keys), *op.keys, *op.args)


def _options(op: Op) -> dict[str, bool]:
    return {"get": True} if isinstance(op, Command) else {}


async def _load(client: Client, s: Script) -> None:
    # On a cluster client, SCRIPT LOAD goes to every primary.
    await client.script_load(s.source)


async def run(client: Client, s: Script, keys: Sequence[str], args: Sequence[Arg]) -> Any:
    """EVALSHA ``s``; on NOSCRIPT load it and run once more."""
    if isinstance(client, RedisCluster):
        [result] = await execute_calls(client, [Call(s, keys, args)])
        if isinstance(result, BaseException):
            raise result
        return result
    try:
        return await client.execute_command("EVALSHA", s.sha, len(keys), *keys, *args)  # type: ignore[no-untyped-call]
    except NoScriptError:
        await _load(client, s)
        return await client.execute_command("EVALSHA", s.sha, len(keys), *keys, *args)  # type: ignore[no-untyped-call]


def queue(pipe: Pipeline, call: Op) -> None:
    """Queue ``call`` on ``pipe`` as a raw EVALSHA, or a :class:`Command` as it is
    (routed by key on a cluster)."""
    if isinstance(call, Command):
        pipe.execute_command(*call.args, get=True)
    else:
        pipe.execute_command("EVALSHA", call.script.sha, len(call.keys), *call.keys, *call.args)


@dataclass(slots=True)
class Executed:
    """What :func:`execute` got: a result (or exception) per call, in order, and per
    call how many replicas confirmed its writes (``WAIT``; -1 without one, or when the
    call failed)."""

    results: list[Any]
    confirmed: list[int]


async def execute_calls(client: Client, calls: Sequence[Op]) -> list[Any]:
    """Run ``calls`` pipelined; results (or exceptions) in order.

    Commands that hit NOSCRIPT are rerun after loading their scripts; any other error
    is returned in its slot, for the caller to translate.
    """
    return (await execute(client, calls)).results


async def execute(client: Client, calls: Sequence[Op], *, wait_replicas: int = 0, wait_ms: int = 0) -> Executed:
    """:func:`execute_calls`, and with ``wait_replicas`` each pipeline ends with
    ``WAIT wait_replicas wait_ms`` on its own connection: on a cluster, the connection
    of the node that ran the calls (docs/architecture.md §9)."""
    if isinstance(client, RedisCluster):
        return await _cluster_calls(client, calls, wait_replicas, wait_ms)
    results = await _pipeline(client, calls, wait_replicas, wait_ms)
    missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
    if missing:
        for s in {c.script for i in missing if isinstance(c := calls[i], Call)}:
            await _load(client, s)
        retried = await _pipeline(client, [calls[i] for i in missing], wait_replicas, wait_ms)
        if wait_replicas:
            results[-1] = retried.pop()
        for i, r in zip(missing, retried, strict=True):
            results[i] = r
    confirmed = -1
    if wait_replicas:
        last = results.pop()
        confirmed = last if isinstance(last, int) else 0
    return Executed(results, [-1 if isinstance(r, BaseException) else confirmed for r in results])


async def _pipeline(client: Client, calls: Sequence[Op], wait_replicas: int = 0, wait_ms: int = 0) -> list[Any]:
    if len(calls) == 1 and not wait_replicas:  # no pipeline object for the common case
        try:
            return [await client.execute_command(*_command(calls[0]), **_options(calls[0]))]
        except ResponseError as exc:  # NOSCRIPT included: same contract as the pipeline
            return [exc]
    pipe = client.pipeline(transaction=False)
    for c in calls:
        queue(pipe, c)
    if wait_replicas:
        pipe.execute_command("WAIT", wait_replicas, wait_ms)
    return list(await pipe.execute(raise_on_error=False))


# --------------------------------------------------------------------------- cluster


async def _cluster_calls(client: RedisCluster, calls: Sequence[Op], wait_replicas: int,
                         wait_ms: int) -> Executed:
    """One pipeline per node; redirections and NOSCRIPT rerun the calls they hit (up to
    ``_REDIRECTS`` rounds), everything else is returned in the call's slot."""
    await client.initialize()  # a no-op unless redis-py itself asked for a refresh
    manager = client.nodes_manager
    results: list[Any] = [None] * len(calls)
    confirmed = [-1] * len(calls)
    todo: dict[int, tuple[ClusterNode, bool]] = {}  # call -> (node, with ASKING)
    for i, c in enumerate(calls):
        try:
            todo[i] = (manager.get_node_from_slot(client.keyslot(c.keys[0])), False)
        except Exception as exc:  # an uncovered slot: SlotNotCoveredError
            results[i] = exc
    for _ in range(_REDIRECTS):
        if not todo:
            break
        by_node: dict[str, tuple[ClusterNode, list[tuple[int, bool]]]] = {}
        for i, (node, asking) in todo.items():
            by_node.setdefault(node.name, (node, []))[1].append((i, asking))
        todo = {}
        try:
            outcomes = await asyncio.gather(*(
                _node_pipeline(node, calls, items, wait_replicas, wait_ms) for node, items in by_node.values()
            ), return_exceptions=True)
        except BaseException:  # cancelled (a caller's deadline): the node may be gone
            refresh_slots(client, background=True)
            raise
        for (node, items), outcome in zip(by_node.values(), outcomes, strict=True):
            if isinstance(outcome, BaseException):
                if not isinstance(outcome, Exception):
                    raise outcome
                if isinstance(outcome, CONNECTION_ERRORS):
                    refresh_slots(client, background=True)
                for i, _ in items:
                    results[i] = outcome
                continue
            replies, waited = outcome
            for (i, asking), reply in zip(items, replies, strict=True):
                results[i] = reply
                try:
                    again = await _redirect(client, node, calls[i], reply, asking)
                except Exception as exc:  # loading the script failed: that is the reply
                    results[i], again = exc, None
                if again is not None:
                    todo[i] = again
                elif not isinstance(reply, BaseException):
                    confirmed[i] = waited
    return Executed(results, confirmed)


async def _node_pipeline(node: ClusterNode, calls: Sequence[Op], items: list[tuple[int, bool]],
                         wait_replicas: int, wait_ms: int) -> tuple[list[Any], int]:
    """The calls ``items`` on one connection of ``node`` (ASKING right before a call that
    was asked to come here), then WAIT: each call's reply, and the WAIT count."""
    commands: list[PipelineCommand] = []
    positions: list[int] = []
    for i, asking in items:
        if asking:
            commands.append(PipelineCommand(len(commands), "ASKING"))
        positions.append(len(commands))
        commands.append(PipelineCommand(len(commands), *_command(calls[i]), **_options(calls[i])))
    if wait_replicas:
        commands.append(PipelineCommand(len(commands), "WAIT", wait_replicas, wait_ms))
    await node.execute_pipeline(commands)
    waited = commands[-1].result if wait_replicas else -1
    return [commands[p].result for p in positions], waited if isinstance(waited, int) else 0


async def _redirect(client: RedisCluster, node: ClusterNode, call: Op, reply: object,
                    asking: bool) -> tuple[ClusterNode, bool] | None:
    """Where to run ``call`` again after ``reply``, or None if its reply stands."""
    manager = client.nodes_manager
    if isinstance(reply, MovedError):
        await manager.move_slot(reply)  # the slot's new owner (a failover, a finished move)
        return manager.get_node_from_slot(reply.slot_id), False
    if isinstance(reply, AskError):  # the slot is moving and the keys are there already
        target = manager.get_node(reply.host, reply.port)
        if target is None:  # a node we do not know yet: learn the cluster's nodes
            refresh_slots(client, background=True)
            return None
        return target, True
    if isinstance(reply, NoScriptError) and isinstance(call, Call):  # a new or failed-over primary
        await node.execute_command("SCRIPT", "LOAD", call.script.source)
        return node, asking
    return None

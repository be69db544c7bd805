"""Consume → produce, exactly once: the outputs of transactional processing and their
fenced commit (docs/exactly-once.md, "Consume → produce").

With ``Consumer.process(handler, transactional=True)`` the handler returns the records
to write, an iterable of :class:`~redcurrent.Output`. :class:`Outputs` routes and frames
them into a :class:`Pending` batch per input partition; :meth:`Outputs.commit` writes a
batch and acks its inputs in one ``commit_outputs`` script call on the input partition's
slot, fenced by the owner token exactly as the fetch script is: a consumer that lost the
partition writes nothing and acks nothing. The script writes an input's outputs only if
its XACK moved it out of the pending list, so a commit retried after a lost reply never
writes twice.

Where an output goes: to the input's partition p when the output topic is co-located
with the input topic (or is the input topic), on one node and on a cluster alike; on a
cluster any other output topic is refused (ConfigError, before anything is written),
since one script can only touch one slot; on one node an output to another topic is
routed by its key (``murmur3(key) % partitions``, keyless: ``p % partitions``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

import orjson

from . import scripts
from . import topics as topics_mod
from .accumulator import WAKE
from .errors import ConfigError, InvalidPartitionsError, UnknownTopicError
from .keys import Keys, validate_name
from .partitioner import partition_for_key
from .replies import CommitRefused, parse_commit_outputs
from .serde import (
    CODEC_CODES,
    INPUT_HEADER,
    KEY_TYPE_CODES,
    RECORD_HEADER,
    encode_headers,
    encode_key,
    encode_value,
)
from .structs import Message, Output, TopicPartition

if TYPE_CHECKING:
    from .connection import Client
    from .fetcher import PartitionFetcher
    from .topics import TopicMeta

__all__ = ["Outputs", "Pending"]

log = logging.getLogger(__name__)

_COMMIT = scripts.script("commit_outputs")
_INDEX = [j.to_bytes(2, "big") for j in range(256)]
_pack = RECORD_HEADER.pack
_INPUT_HEADER = INPUT_HEADER.encode()
MAX_REROUTES = 3  # commits refused as routed before a growth, before giving up


@dataclass(slots=True)
class Pending:
    """The handled, uncommitted messages of one input partition's batch, in stream
    order, with the outputs each returned (routed and framed when added)."""

    tp: TopicPartition
    msgs: list[Message] = field(default_factory=list)
    results: list[list[Output]] = field(default_factory=list)
    # output (topic, partition) -> its index in the commit's KEYS
    index: dict[tuple[str, int], int] = field(default_factory=dict)
    blobs: list[bytes] = field(default_factory=list)  # per message: its framed outputs ("" none)
    metas: dict[str, TopicMeta] = field(default_factory=dict)  # output topics as routed

    origin: str = ""  # "<topic>/<partition>/": the input header's value, less the id

    def set_origin(self) -> str:
        self.origin = f"{self.tp.topic}/{self.tp.partition}/"
        return self.origin

    def clear(self) -> None:
        self.metas.clear()
        self.msgs.clear()
        self.results.clear()
        self.index.clear()
        self.blobs.clear()


class Outputs:
    """Routes, frames and commits the outputs of one consumer's transactional handler."""

    def __init__(self, client: Client, keys: Keys, is_cluster: bool, token: str, group: str,
                 *, announce: bool = False) -> None:
        self._client = client
        self._keys = keys
        self._cluster = is_cluster
        self._announce = announce  # SPUBLISH each written output partition (cluster, Redis 7+)
        self._token = token
        self._group = group
        self._metas: dict[str, TopicMeta] = {}
        # (input topic, output topic) -> (output metadata, co-located: same partition)
        self._routes: dict[tuple[str, str], tuple[TopicMeta, bool]] = {}

    async def meta(self, topic: str) -> TopicMeta:
        meta = self._metas.get(topic)
        if meta is None:
            validate_name(topic, "output topic")
            meta = await topics_mod.read_meta(self._client, self._keys, topic)
            if meta is None:
                raise UnknownTopicError(f"output topic {topic!r} does not exist: create it first"
                                        " (co-located with the input topic on a Redis Cluster)")
            self._metas[topic] = meta
        return meta

    async def add(self, pending: Pending, msg: Message, result: object) -> None:
        """Route and frame what the handler returned for ``msg``. TypeError/ValueError for
        a bad result (a failed attempt, as a handler error is); ConfigError or a TopicError
        when an output cannot go where it names (nothing is written: process() raises)."""
        outs: list[Output]
        if type(result) is list:
            outs = result
        elif result is None:
            outs = []
        elif isinstance(result, Output) or isinstance(result, str | bytes) or not isinstance(result, Iterable):
            raise TypeError(f"a transactional handler returns an iterable of Output (or None), not {type(result).__name__}")
        else:
            outs = list(result)
        blob = b""
        tp = pending.tp
        origin = pending.origin or pending.set_origin()
        for out in outs:
            if type(out) is not Output and not isinstance(out, Output):
                raise TypeError(f"a transactional handler's outputs must be Output, not {type(out).__name__}")
            route = self._routes.get((tp.topic, out.topic))
            if route is None:
                route = await self._route(tp, out.topic)
            meta, same_slot = route
            if same_slot:
                partition = tp.partition
            elif out.key is None:
                partition = tp.partition % meta.partitions
            else:
                encode_key(out.key)  # TypeError for a key that is neither str nor bytes
                partition = partition_for_key(out.key, meta.partitions)
            pending.metas[out.topic] = meta
            j = pending.index.setdefault((out.topic, partition), len(pending.index))
            # the output partition's index (Lua: ">I2"), then the framed record
            blob += _INDEX[j] if j < 256 else j.to_bytes(2, "big")
            blob += _frame(meta, out, origin, msg.id)
        pending.msgs.append(msg)
        pending.results.append(outs)
        pending.blobs.append(blob)

    async def _route(self, tp: TopicPartition, topic: str) -> tuple[TopicMeta, bool]:
        """The metadata of output ``topic`` seen from input ``tp``, and whether it shares the
        input's slots (co-located: the output goes to partition p). Checked once per pair."""
        meta = await self.meta(topic)
        source = await self.meta(tp.topic)
        same_slot = (meta.colocate_with or meta.name) == (source.colocate_with or source.name)
        if same_slot and meta.partitions != source.partitions:
            raise InvalidPartitionsError(f"output topic {topic!r} has {meta.partitions} partitions, "
                                         f"input topic {tp.topic!r} {source.partitions}")
        if not same_slot and self._cluster:
            raise ConfigError(
                f"output topic {topic!r} is not co-located with input topic {tp.topic!r}: on a Redis "
                "Cluster a transactional output must share its input's slot; create it with "
                f"Admin.create_topic({topic!r}, partitions={source.partitions}, colocate_with={tp.topic!r})"
            )
        self._routes[tp.topic, topic] = (meta, same_slot)
        return meta, same_slot

    def forget(self, topic: str) -> None:
        """Read ``topic``'s metadata again before its next output (grown, deleted, reconfigured)."""
        self._metas.pop(topic, None)
        for pair in [pair for pair in self._routes if topic in pair]:
            del self._routes[pair]

    async def commit(self, fetcher: PartitionFetcher, pending: Pending, acks: list[str]) -> None:
        """Write ``pending``'s outputs and ack its inputs (and ``acks``: finished inputs
        with no outputs) in one fenced script call. FencedError: nothing written or acked."""
        for _ in range(MAX_REROUTES):
            keys, args = self._call_args(fetcher, pending, acks)
            reply = await fetcher.call("commit", partial(scripts.run, self._client, _COMMIT, keys, args))
            result = parse_commit_outputs(reply, fetcher.tp)
            topics = list(pending.index)
            if not isinstance(result, CommitRefused):
                if result.skipped:
                    log.info("%s: %d input(s) were already acked (a commit retried after a lost reply): "
                             "their outputs were not written again", fetcher.tp, result.skipped)
                for (topic, _p), version in zip(topics, result.versions, strict=True):
                    known = self._metas.get(topic)
                    if known is not None and version > known.version:
                        self.forget(topic)  # grown or reconfigured: read it again
                return
            topic = topics[result.output][0]
            self.forget(topic)
            if result.status == "NOTOPIC":
                raise UnknownTopicError(f"output topic {topic!r} was deleted: nothing written, nothing acked")
            await self._reroute(pending)
        raise UnknownTopicError(f"the outputs of {fetcher.tp} kept being routed before a growth; giving up")

    async def _reroute(self, pending: Pending) -> None:
        msgs, results = list(pending.msgs), list(pending.results)
        pending.clear()
        for msg, outs in zip(msgs, results, strict=True):
            await self.add(pending, msg, outs)

    def _call_args(self, fetcher: PartitionFetcher, pending: Pending, acks: list[str]
                   ) -> tuple[list[str], list[str | int | bytes]]:
        k = self._keys
        empty = [m.id for m, b in zip(pending.msgs, pending.blobs, strict=True) if not b]
        keys = [fetcher.stream, fetcher.owner]
        args: list[str | int | bytes] = [self._token, self._group, ",".join([*acks, *empty]), len(pending.index)]
        now_ms = int(time.time() * 1000)
        for topic, p in pending.index:
            meta = pending.metas[topic]
            keys += [k.stream(topic, p), k.topic_version(topic, p), k.barrier(topic, p)]
            maxlen, retention = meta.config.maxlen, meta.config.retention_ms
            args += [maxlen or "", f"{now_ms - retention}-0" if retention else "", meta.version]
        for m, b in zip(pending.msgs, pending.blobs, strict=True):
            if b:
                args += [m.id, b]
        if self._announce:
            args.append(WAKE)
        return keys, args


def _frame(meta: TopicMeta, out: Output, origin: str, input_id: str) -> bytes:
    """One output in the produce framing (the record header, key, value, headers, expiry),
    with the header naming its input. Per output, so the common case takes no detour."""
    codec, data = encode_value(out.value, None)
    key = out.key
    if type(key) is str and key.isascii():
        key_type, kb = 1, key.encode()
    else:
        name, kb = encode_key(key)  # typed errors for a key that is not str, bytes or None
        key_type = KEY_TYPE_CODES[name]
    source = origin + input_id
    if out.headers:
        encode_headers(out.headers)  # checks them (str to str, no reserved names)
        headers = dict(out.headers)
        headers[INPUT_HEADER] = source
        hb = orjson.dumps(headers)
    else:  # topic names and entry ids need no JSON escaping
        hb = b'{"' + _INPUT_HEADER + b'":"' + source.encode() + b'"}'
    ttl_ms = meta.config.ttl_ms
    expiry = b"%d" % (int(time.time() * 1000) + ttl_ms) if ttl_ms else b""
    header = _pack(key_type, CODEC_CODES[codec], len(kb), len(data), len(hb), len(expiry))
    return b"".join((header, kb, data, hb, expiry))

"""Serialization and the versioned stream-entry formats (``1`` and ``2``).

Format 1: a message is one stream entry with these fields::

    f    format: "1" (the version), then the value codec, then the key type:
           codec    j = JSON (orjson), b = raw bytes (untouched), c = custom serializer
           key      n = no key, s = UTF-8 str, b = bytes
         e.g. "1js" is a JSON value with a str key, "1bn" raw bytes without a key
    v    the value bytes
    k    the key bytes; absent when there is no key
    h    headers as a JSON object of str -> str; absent when there are none
    x    expiry, ms since the epoch; absent when the message has no TTL
    t    create timestamp, ms since the epoch; optional. redcurrent's producer leaves
         it out: the entry id's time (Redis's clock at append) is the timestamp.

Format 2, the common record (no headers, no expiry) in one field: its name is "2",
the codec letter, the key type letter, then the key bytes; its value is the value
bytes. ``2js<key> -> <json>`` means exactly what ``f=1js v=<json> k=<key>`` means.

Other languages write and read the same fields; see ``docs/message-format.md``.
Fewer fields is a measured choice: the produce script's cost is per field.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from typing import Any, NamedTuple

import orjson

from .errors import DecodeError, SerializationError
from .offsets import id_ms
from .protocols import Deserializer, Serializer
from .structs import Message

__all__ = [
    "FORMAT_VERSION",
    "Deserializer",
    "FetchedEntry",
    "Serializer",
    "decode_entry",
    "decode_fields",
    "decode_fresh",
    "entry_slots",
    "encode_headers",
    "encode_key",
    "encode_value",
]

# Header of a dead letter requeued for one group: other groups ack and skip it. A
# reserved header of the entry format, so it is named here; redcurrent.deadletter writes it.
REQUEUE_HEADER = "rc-requeue-group"
RESERVED_HEADER_PREFIX = "rc-"  # header names redcurrent itself writes
# Header of a transactional output: its input, "topic/partition/id" (docs/exactly-once.md, "Consume → produce").
INPUT_HEADER = "rc-input"
FORMAT_VERSION = 49  # ord("1"): the first byte of the format field
PAIR_VERSION = 50  # ord("2"): the first byte of a format-2 entry's one field name
TRIMMED = 0  # the fetch script puts integer 0 (no field value can be one) in the format slot of a deleted entry

_CODEC_JSON = b"json"
_CODEC_BYTES = b"bytes"
_CODEC_CUSTOM = b"custom"
# Codes the produce script's framing uses for key types and codecs.
KEY_TYPE_CODES = {b"": 0, b"s": 1, b"b": 2}
CODEC_CODES = {_CODEC_JSON: 0, _CODEC_BYTES: 1, _CODEC_CUSTOM: 2}
RECORD_HEADER = struct.Struct(">BBIIIB")
# The produce script's frame of a format-2 record: PAIR_VERSION, the field name's length
# (3 + the key's), the value's length, and the name's first 3 bytes ("2", codec, key
# type); then the key and the value (lua/produce.lua). Its first byte tells it from a
# RECORD_HEADER frame, whose first byte (the key type) is never PAIR_VERSION.
PAIR_HEADER = struct.Struct(">BII3s")
# The name prefix of a format-2 entry, by codec code * 3 + key type code.
PAIR_FORMATS = (b"2jn", b"2js", b"2jb", b"2bn", b"2bs", b"2bb", b"2cn", b"2cs", b"2cb")
_PAIR_CODES = {f: (i // 3, i % 3) for i, f in enumerate(PAIR_FORMATS)}


_CODEC_LETTER = {ord("j"): _CODEC_JSON, ord("b"): _CODEC_BYTES, ord("c"): _CODEC_CUSTOM}


def pair_codes(header: bytes) -> tuple[int, int]:
    """(codec code, key type code) of a PAIR_HEADER frame."""
    return _PAIR_CODES[header[-3:]]


def encode_value(value: Any, serializer: Serializer | None) -> tuple[bytes, bytes]:
    """(codec, bytes) for a value; bytes pass through untouched."""
    if type(value) is bytes:
        return _CODEC_BYTES, value
    if isinstance(value, bytearray | memoryview):
        return _CODEC_BYTES, bytes(value)
    try:
        if serializer is None:
            data = orjson.dumps(value)
            if b"null" in data:  # orjson writes NaN and infinities as null: refuse them
                _reject_non_finite(value)
            return _CODEC_JSON, data
        data = serializer(value)
    except (TypeError, ValueError, orjson.JSONEncodeError) as exc:
        raise SerializationError(
            f"cannot serialize value of type {type(value).__name__}: {exc}; "
            "send bytes or pass a serializer"
        ) from exc
    if not isinstance(data, bytes):
        raise SerializationError(f"serializer returned {type(data).__name__}, expected bytes")
    return _CODEC_CUSTOM, data


def _reject_non_finite(value: Any, depth: int = 0) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise SerializationError(f"cannot serialize {value!r} as JSON (it would arrive as null)")
    if depth > 256:
        return
    if isinstance(value, dict):
        for v in value.values():
            _reject_non_finite(v, depth + 1)
    elif isinstance(value, list | tuple):
        for v in value:
            _reject_non_finite(v, depth + 1)


def encode_key(key: object) -> tuple[bytes, bytes]:
    """(key type, key bytes); (b"", b"") for no key."""
    if key is None:
        return b"", b""
    if isinstance(key, str):
        try:
            return b"s", key.encode()
        except UnicodeEncodeError as exc:
            raise SerializationError(
                f"a str key must be valid Unicode text ({exc}); send bytes instead; nothing was written"
            ) from None
    if isinstance(key, bytes):
        return b"b", key
    raise TypeError(f"key must be str, bytes or None, not {type(key).__name__}")


def encode_headers(headers: Mapping[str, str] | None) -> bytes:
    """Headers as a JSON object; b"" for none. Keys and values must be str."""
    if headers is None:
        return b""
    if not isinstance(headers, Mapping):
        raise TypeError(f"headers must be a mapping of str to str, not {type(headers).__name__}")
    if not headers:
        return b""
    for name, val in headers.items():
        if not isinstance(name, str) or not isinstance(val, str):
            raise TypeError(
                f"headers must map str to str; got {type(name).__name__} -> {type(val).__name__}"
            )
        if name.startswith(RESERVED_HEADER_PREFIX):
            raise ValueError(f"header names starting with {RESERVED_HEADER_PREFIX!r} are reserved: {name!r}")
    try:
        return orjson.dumps(dict(headers))
    except orjson.JSONEncodeError as exc:
        raise ValueError(f"headers are not valid UTF-8 text: {exc}") from exc


class FetchedEntry(NamedTuple):
    """One stream entry's format-1 fields, in place, next to its id and delivery count:
    what :func:`decode_entry` reads and a dead letter keeps. A missing field is ``b""``;
    ``fmt`` is ``TRIMMED`` (an int no field value can be) for an entry deleted while
    pending. Built once per entry that is not the producer's common shape, never for
    that one (:func:`decode_fields`)."""

    id: bytes
    attempts: int
    fmt: bytes | int
    value: bytes
    key: bytes
    headers: bytes
    expiry: bytes
    timestamp: bytes


_EMPTY_HEADERS: Mapping[str, str] = {}
_PLAIN_JSON = frozenset((b"1js", b"1jn"))
_loads = orjson.loads
_tuple_new = tuple.__new__


def decode_entry(
    topic: str,
    partition: int,
    entry: FetchedEntry,
    deserializer: Deserializer | None,
) -> Message:
    """Build a Message from one entry's fields: id, attempts, f, v, k, h, x, t.

    Raises DecodeError with a reason for anything that is not a valid format-1 entry.
    """
    entry_id, attempts, fmt, value, key, headers, expiry, ts = entry
    if deserializer is None and not headers and not expiry and not ts and fmt in _PLAIN_JSON:
        return _plain(topic, partition, entry_id, attempts, key if fmt == b"1js" else None, value)
    eid = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
    if not isinstance(fmt, bytes) or len(fmt) != 3 or fmt[0] != FORMAT_VERSION:
        raise DecodeError(_format_problem(fmt))
    try:
        decoded_value = _decode_value(fmt[1], value, deserializer)
        decoded_key = _decode_key(fmt[2], key)
        hdrs = orjson.loads(headers) if headers else _EMPTY_HEADERS
        if not isinstance(hdrs, dict) or not all(type(v) is str for v in hdrs.values()):
            raise DecodeError("headers field is not a JSON object of str to str")
        exp = int(expiry) if expiry else None
        timestamp = int(ts) if ts else id_ms(eid)
    except DecodeError:
        raise
    except Exception as exc:  # the deserializer is user code: any failure is poison
        raise DecodeError(f"{type(exc).__name__}: {exc}") from exc
    return Message(topic, partition, eid, decoded_key, decoded_value, hdrs, timestamp, int(attempts), exp)


def entry_slots(entry_id: bytes, attempts: int, fields: list[bytes] | None) -> FetchedEntry:
    """One entry's :class:`FetchedEntry` from its raw fields (None: deleted while pending).
    A format-2 entry is read as the format-1 fields it stands for."""
    if fields is None:
        return _tuple_new(FetchedEntry, (entry_id, attempts, TRIMMED, b"", b"", b"", b"", b""))
    if len(fields) == 2:
        name = fields[0]
        if isinstance(name, bytes) and name[:3] in _PAIR_CODES and (name[2] != 110 or len(name) == 3):  # 110: "n"
            return _tuple_new(FetchedEntry, (entry_id, attempts, b"1" + name[1:3], fields[1], name[3:],
                                             b"", b"", b""))
    by_name = dict(zip(fields[::2], fields[1::2], strict=True))
    get = by_name.get
    return _tuple_new(FetchedEntry, (entry_id, attempts, get(b"f", b""), get(b"v", b""), get(b"k", b""),
                                     get(b"h", b""), get(b"x", b""), get(b"t", b"")))


def decode_fields(
    topic: str,
    partition: int,
    entry_id: bytes,
    attempts: int,
    fields: list[bytes] | None,
    deserializer: Deserializer | None,
) -> Message:
    """Build a Message from one stream entry as XREADGROUP returns it (id, flat fields).

    The producer writes the common record in format 2 (one field ``2js<key>``) or, with
    headers or a TTL, format 1; the common shapes are decoded without building the
    slots. Raises DecodeError."""
    if deserializer is None and fields is not None:
        n = len(fields)
        if n == 2:
            name = fields[0]
            fmt = name[:3]
            if fmt == b"2js":
                return _plain(topic, partition, entry_id, attempts, name[3:], fields[1])
            if fmt == b"2jn" and len(name) == 3:
                return _plain(topic, partition, entry_id, attempts, None, fields[1])
        elif n == 6 and fields[0] == b"f" and fields[1] == b"1js" and fields[2] == b"v" and fields[4] == b"k":
            return _plain(topic, partition, entry_id, attempts, fields[5], fields[3])
        elif n == 4 and fields[0] == b"f" and fields[1] == b"1jn" and fields[2] == b"v":
            return _plain(topic, partition, entry_id, attempts, None, fields[3])
    return decode_entry(topic, partition, entry_slots(entry_id, attempts, fields), deserializer)


def _plain(topic: str, partition: int, entry_id: bytes, attempts: int, key: bytes | None, value: bytes) -> Message:
    """A JSON value with a str key (or none), no headers, no TTL: the Message in one step."""
    try:
        eid = entry_id.decode()
        msg: Message = _tuple_new(Message, (
            topic, partition, eid, None if key is None else key.decode(), _loads(value),
            _EMPTY_HEADERS, int(eid[: eid.index("-")]), attempts, None,
        ))
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise DecodeError(f"{type(exc).__name__}: {exc}") from exc
    return msg


def decode_fresh(topic: str, partition: int, entries: list[Any]) -> tuple[list[Message], list[str]] | None:
    """A fresh batch (XREADGROUP ">": every delivery the first) of entries all in the
    producer's common shape (format 2: one field, a JSON value, a str key or none): their
    Messages and ids, in one pass. None when any entry is another shape or does not
    decode: then :func:`decode_fields` goes one by one (and says which one is bad).
    The consumer's hottest loop: per message one tuple, no call besides the decodes."""
    messages: list[Message] = []
    ids: list[str] = []
    add, add_id = messages.append, ids.append
    try:
        for entry_id, fields in entries:
            if len(fields) != 2:
                return None
            name = fields[0]
            if name[:3] == b"2js":
                key: str | None = name[3:].decode()
            elif name == b"2jn":
                key = None
            else:
                return None
            eid = entry_id.decode()
            add_id(eid)
            add(_tuple_new(Message, (topic, partition, eid, key, _loads(fields[1]), _EMPTY_HEADERS,
                                     int(eid[: eid.index("-")]), 1, None)))
    except (TypeError, ValueError, AttributeError):  # None fields, bad JSON or UTF-8: the careful path
        return None
    return messages, ids


def _decode_value(letter: int, value: bytes, deserializer: Deserializer | None) -> Any:
    codec = _CODEC_LETTER.get(letter)
    if codec == _CODEC_BYTES:
        return value
    if codec == _CODEC_JSON:
        return deserializer(value) if deserializer is not None else orjson.loads(value)
    if codec == _CODEC_CUSTOM:
        return deserializer(value) if deserializer is not None else value
    raise DecodeError(f"unknown value codec {chr(letter)!r}")


def _decode_key(letter: int, key: bytes) -> str | bytes | None:
    if letter == 110:  # n
        return None
    if letter == 115:  # s
        return key.decode()
    if letter == 98:  # b
        return bytes(key)
    raise DecodeError(f"unknown key type {chr(letter)!r}")


def _format_problem(fmt: Any) -> str:
    if fmt == TRIMMED and not isinstance(fmt, bytes):
        return "trimmed"
    if not fmt:
        return "missing format field: not a redcurrent entry"
    return f"unknown format {fmt!r}"

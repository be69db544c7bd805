"""serde.py: the versioned entry format round-trips; anything else is a DecodeError.

A fetch-reply record is the list of slots the fetch script returns per entry (see
``lua/fetch.lua``): ``id, attempts`` and then the entry's fields in ``FIELDS`` order,
"" for an absent field. The format field ``f`` is "1" + codec letter + key-type letter.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from redcurrent.errors import DecodeError, RedcurrentError, SerializationError
from redcurrent.serde import (
    RESERVED_HEADER_PREFIX,
    Serializer,
    decode_entry,
    encode_headers,
    encode_key,
    encode_value,
)
from redcurrent.structs import Message

TS = 1_700_000_000_123

text = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)  # no lone surrogates
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)  # orjson's int range
    | st.floats(allow_nan=False, allow_infinity=False)
    | text,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(text, children, max_size=5),
    max_leaves=20,
)
keys = st.none() | text | st.binary(max_size=40)
# Hypothesis also draws string constants found in the code, "rc-" among them: keep the
# reserved prefix out, or the round trip fails at random on a legitimate rejection.
headers = st.none() | st.dictionaries(
    text.filter(lambda name: not name.startswith(RESERVED_HEADER_PREFIX)), text, max_size=6
)


FIELDS = ("f", "v", "k", "h", "x", "t")  # the fetch script's slot order after id, attempts
CODEC_LETTER = {b"json": b"j", b"bytes": b"b", b"custom": b"c"}
KEY_LETTER = {b"": b"n", b"s": b"s", b"b": b"b"}
ENTRY_ID = b"1700000000123-0"  # its ms part is the timestamp when "t" is absent


def slots(entry_id: bytes = ENTRY_ID, attempts: int = 1, **fields: bytes) -> list[Any]:
    return [entry_id, attempts, *(fields.get(name, b"") for name in FIELDS)]


def record(
    value: Any,
    key: object = None,
    hdrs: Mapping[str, str] | None = None,
    expiry: int | None = None,
    serializer: Serializer | None = None,
    *,
    entry_id: bytes = ENTRY_ID,
    attempts: int = 1,
    ts: int | None = None,
) -> list[Any]:
    """The fetch slots of a message encoded the way the producer encodes it."""
    codec, data = encode_value(value, serializer)
    kt, kb = encode_key(key)
    return slots(
        entry_id,
        attempts,
        f=b"1" + CODEC_LETTER[codec] + KEY_LETTER[kt],
        v=data,
        k=kb,
        h=encode_headers(hdrs),
        x=b"" if expiry is None else str(expiry).encode(),
        t=b"" if ts is None else str(ts).encode(),
    )


@given(json_values, keys, headers, st.none() | st.integers(0, 2**53), st.integers(1, 1000))
def test_round_trip_json(
    value: Any,
    key: str | bytes | None,
    hdrs: dict[str, str] | None,
    expiry: int | None,
    attempts: int,
) -> None:
    msg = decode_entry(
        "orders", 3, record(value, key, hdrs, expiry, attempts=attempts, ts=TS), None
    )
    assert msg == Message(
        "orders", 3, "1700000000123-0", key, value, hdrs or {}, TS, attempts, expiry
    )
    assert type(msg.key) is type(key)  # str stays str, bytes stays bytes


@given(st.binary(max_size=200), keys)
def test_bytes_pass_through_untouched(data: bytes, key: str | bytes | None) -> None:
    codec, encoded = encode_value(data, None)
    assert codec == b"bytes" and encoded is data
    msg = decode_entry("t", 0, record(data, key), None)
    assert msg.value == data and type(msg.value) is bytes


def test_bytes_are_not_json_encoded_even_with_a_serializer() -> None:
    raw = b'{"not": "parsed"}'
    assert encode_value(raw, lambda v: b"never") == (b"bytes", raw)
    assert encode_value(bytearray(b"ab"), None) == (b"bytes", b"ab")
    assert encode_value(memoryview(b"cd"), None) == (b"bytes", b"cd")


@given(json_values)
def test_round_trip_custom_serializer(value: Any) -> None:
    def ser(v: Any) -> bytes:
        return b"X" + orjson.dumps(v)

    def de(b: bytes) -> Any:
        assert b[:1] == b"X"
        return orjson.loads(b[1:])

    codec, _ = encode_value(value, ser)
    assert codec == b"custom"
    assert decode_entry("t", 0, record(value, serializer=ser), de).value == value
    # without a deserializer a custom value comes back as its bytes
    assert decode_entry("t", 0, record(value, serializer=ser), None).value == ser(value)


def test_timestamp_is_the_entry_id_time_unless_t_is_given() -> None:
    assert decode_entry("t", 0, record(1), None).timestamp == 1700000000123
    assert decode_entry("t", 0, record(1, ts=42), None).timestamp == 42


def test_json_is_orjson() -> None:
    assert encode_value({"a": [1, 2.5, None, True]}, None) == (b"json", b'{"a":[1,2.5,null,true]}')


def test_key_encoding() -> None:
    assert encode_key(None) == (b"", b"")
    assert encode_key("k") == (b"s", b"k")
    assert encode_key("é") == (b"s", "é".encode())
    assert encode_key(b"\x00\xff") == (b"b", b"\x00\xff")
    assert encode_key("") == (b"s", b"")  # an empty key is still a key


@pytest.mark.parametrize("bad", [1, 1.5, ["k"], object(), bytearray(b"k")])
def test_key_of_wrong_type_raises_type_error(bad: object) -> None:
    with pytest.raises(TypeError, match="key must be str, bytes or None"):
        encode_key(bad)


def test_headers_encoding() -> None:
    assert encode_headers(None) == b""
    assert encode_headers({}) == b""
    assert orjson.loads(encode_headers({"a": "1", "é": "ü"})) == {"a": "1", "é": "ü"}


@pytest.mark.parametrize(
    "bad",
    [{"a": 1}, {"a": None}, {"a": b"x"}, {1: "a"}, {b"a": "b"}, {"a": ["x"]}],
)
def test_headers_not_str_to_str_raise_type_error(bad: Any) -> None:
    with pytest.raises(TypeError, match="headers must map str to str"):
        encode_headers(bad)


def test_headers_not_a_mapping_raise_type_error() -> None:
    with pytest.raises(TypeError, match="headers must be a mapping"):
        encode_headers([("a", "b")])  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- serialize errors


class Opaque:
    pass


@pytest.mark.parametrize(
    "value",
    [Opaque(), {1, 2}, 2**64, -(2**63) - 1, {1: "non-str key"}, 1 + 2j, object()],
    ids=["object", "set", "int-too-big", "int-too-small", "non-str-key", "complex", "bare-object"],
)
def test_unserializable_value_raises_serialization_error(value: Any) -> None:
    with pytest.raises(SerializationError, match="cannot serialize value of type") as err:
        encode_value(value, None)
    assert isinstance(err.value, ValueError) and isinstance(err.value, RedcurrentError)
    assert "send bytes or pass a serializer" in str(err.value)


def test_never_pickles() -> None:
    """A plain Python object is an error, not a pickle."""
    with pytest.raises(SerializationError):
        encode_value(Opaque(), None)


def test_serializer_errors_become_serialization_error() -> None:
    def failing(v: Any) -> bytes:
        raise ValueError("nope")

    with pytest.raises(SerializationError, match="nope"):
        encode_value({"a": 1}, failing)


def test_serializer_must_return_bytes() -> None:
    with pytest.raises(SerializationError, match="serializer returned str, expected bytes"):
        encode_value({"a": 1}, lambda v: "text")  # type: ignore[arg-type, return-value]


def test_nan_and_infinities_are_refused_rather_than_stored_as_null() -> None:
    # orjson writes them as null; a value must never change silently on the way
    for bad in (math.nan, math.inf, -math.inf, {"x": [1.0, math.nan]}):
        with pytest.raises(SerializationError):
            encode_value(bad, None)
    assert encode_value(None, None) == (b"json", b"null")


# ----------------------------------------------------------------------------- decode errors


def corrupt(**changes: Any) -> list[Any]:
    base = record({"ok": True}, "k", {"h": "v"}, 123)
    index = {name: 2 + i for i, name in enumerate(FIELDS)}
    for name, value in changes.items():
        if name == "entry_id":
            base[0] = value
        else:
            base[index[name]] = value
    return base


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"f": b"2js"}, "unknown format b'2js'"),
        ({"f": b"0jn"}, "unknown format"),
        ({"f": b"1j"}, "unknown format"),
        ({"f": b"1jsx"}, "unknown format"),
        ({"f": b""}, "missing format field: not a redcurrent entry"),
        ({"f": 0}, "trimmed"),  # the fetch script's integer marker for a deleted entry
        ({"f": b"-"}, "unknown format"),  # a foreign "-" is not mistaken for it
        ({"v": b"{not json"}, "JSONDecodeError"),
        ({"v": b""}, "JSONDecodeError"),
        ({"f": b"1ps"}, "unknown value codec 'p'"),
        ({"f": b"1ji"}, "unknown key type 'i'"),
        ({"t": b"yesterday"}, "ValueError"),
        ({"entry_id": b"not-an-id"}, "ValueError"),
        ({"h": b"[1, 2]"}, "headers field is not a JSON object"),
        ({"h": b"{bad"}, "JSONDecodeError"),
        ({"x": b"soon"}, "ValueError"),
    ],
)
def test_corrupt_entries_raise_decode_error(changes: dict[str, bytes], reason: str) -> None:
    with pytest.raises(DecodeError, match=re.escape(reason)):
        decode_entry("t", 0, corrupt(**changes), None)


def test_valid_corrupt_base_decodes() -> None:
    """The base of the corrupt cases above is itself valid."""
    msg = decode_entry("t", 0, corrupt(), None)
    assert (msg.value, msg.key, msg.headers, msg.expires_at) == ({"ok": True}, "k", {"h": "v"}, 123)


def test_foreign_stream_entry_is_decode_error() -> None:
    """An entry some other tool XADDed has none of our fields: every slot is empty."""
    with pytest.raises(DecodeError, match="missing format field"):
        decode_entry("t", 0, slots(), None)


def test_failing_deserializer_is_decode_error() -> None:
    def de(b: bytes) -> Any:
        raise RuntimeError("user code broke")

    with pytest.raises(DecodeError, match="RuntimeError: user code broke"):
        decode_entry("t", 0, slots(f=b"1cn", v=b"x"), de)


def test_decode_error_is_a_redcurrent_error() -> None:
    assert issubclass(DecodeError, RedcurrentError)


def test_headers_that_are_not_str_to_str_are_decode_error() -> None:
    with pytest.raises(DecodeError, match="header"):
        decode_entry("t", 0, corrupt(h=b'{"n": 1}'), None)

"""serde.py: the versioned entry format round-trips; anything else is a DecodeError.

A fetch-reply record is the list of slots the fetch script returns per entry (see
``lua/fetch.lua``): ``id, attempts`` and then the entry's fields in ``FIELDS`` order,
"" for an absent field. The format field ``f`` is "1" + codec letter + key-type letter.

Format 2, the common record (no headers, no expiry) as XREADGROUP returns it: ONE field
whose name is "2" + codec letter + key-type letter + the key bytes, and whose value is
the value bytes. ``entry_slots`` reads it as the format-1 slots it stands for, and
``decode_fields`` decodes it exactly as the format-1 entry.
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
    FetchedEntry,
    Serializer,
    decode_entry,
    decode_fields,
    decode_fresh,
    encode_headers,
    encode_key,
    encode_value,
    entry_slots,
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


# ----------------------------------------------------------------------------- format 2


def format1_flat(value: Any, key: object = None, serializer: Serializer | None = None) -> list[bytes]:
    """The flat fields (as XREADGROUP returns them) of a format-1 entry for a record."""
    codec, data = encode_value(value, serializer)
    kt, kb = encode_key(key)
    flat = [b"f", b"1" + CODEC_LETTER[codec] + KEY_LETTER[kt], b"v", data]
    return [*flat, b"k", kb] if kt else flat


def format2_flat(value: Any, key: object = None, serializer: Serializer | None = None) -> list[bytes]:
    """The flat fields of the format-2 entry for the same record: one field."""
    codec, data = encode_value(value, serializer)
    kt, kb = encode_key(key)
    return [b"2" + CODEC_LETTER[codec] + KEY_LETTER[kt] + kb, data]


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ([b"2jsuser-1", b'{"id":1}'], (b"1js", b'{"id":1}', b"user-1")),
        ([b"2jn", b'"x"'], (b"1jn", b'"x"', b"")),
        ([b"2jb\x00\xff", b"[1]"], (b"1jb", b"[1]", b"\x00\xff")),
        ([b"2bn", b"\x00raw"], (b"1bn", b"\x00raw", b"")),
        ([b"2bsk", b"\x01"], (b"1bs", b"\x01", b"k")),
        ([b"2bbkey", b"\x00\x01"], (b"1bb", b"\x00\x01", b"key")),
        ([b"2cn", b"(1, 2)"], (b"1cn", b"(1, 2)", b"")),
        ([b"2csk", b"c"], (b"1cs", b"c", b"k")),
        ([b"2cb\xfe", b"c"], (b"1cb", b"c", b"\xfe")),
        ([b"2js", b"1"], (b"1js", b"1", b"")),  # an empty str key is still a key
        ([b"2js2jsk", b"1"], (b"1js", b"1", b"2jsk")),  # the key is whatever follows, as it is
    ],
)
def test_entry_slots_read_a_format2_entry_as_its_format1_fields(
    fields: list[bytes], expected: tuple[bytes, bytes, bytes]
) -> None:
    fmt, value, key = expected
    assert entry_slots(ENTRY_ID, 3, fields) == FetchedEntry(ENTRY_ID, 3, fmt, value, key, b"", b"", b"")


def test_entry_slots_of_a_format1_entry_and_of_a_deleted_one_are_unchanged() -> None:
    flat = [b"f", b"1js", b"v", b"1", b"k", b"a", b"h", b'{"h":"1"}', b"x", b"9"]
    assert entry_slots(ENTRY_ID, 1, flat) == FetchedEntry(ENTRY_ID, 1, b"1js", b"1", b"a", b'{"h":"1"}', b"9", b"")
    # a format-1 entry of two fields (f alone) is not taken for a format-2 one
    assert entry_slots(ENTRY_ID, 1, [b"f", b"1jn"]).fmt == b"1jn"
    assert entry_slots(ENTRY_ID, 1, None).fmt == 0  # deleted while pending: the trimmed marker


@pytest.mark.parametrize("name", [b"2zzk", b"hello", b"2", b"2j", b"2jx", b"2xs", b"1js", b"3jsk", b"v", b""])
def test_entry_slots_of_a_one_field_entry_that_is_not_format2_is_foreign(name: bytes) -> None:
    """Not a format-2 name: no format field at all, so decoding says it is no redcurrent entry."""
    entry = entry_slots(ENTRY_ID, 1, [name, b"x"])
    assert entry.fmt == b""
    with pytest.raises(DecodeError, match="missing format field: not a redcurrent entry"):
        decode_entry("t", 0, entry, None)
    with pytest.raises(DecodeError, match="missing format field: not a redcurrent entry"):
        decode_fields("t", 0, ENTRY_ID, 1, [name, b"x"], None)


def test_decode_fields_of_format2_entries() -> None:
    def decode(fields: list[bytes], de: Any = None) -> Message:
        return decode_fields("orders", 2, ENTRY_ID, 4, fields, de)

    msg = decode([b"2jsuser-1", b'{"id":1}'])
    assert msg == Message("orders", 2, "1700000000123-0", "user-1", {"id": 1}, {}, TS, 4, None)
    assert decode([b"2jn", b'"x"']) == Message("orders", 2, "1700000000123-0", None, "x", {}, TS, 4, None)
    bs = decode([b"2bsk\xc3\xa9", b"\x00\x01"])  # raw bytes value, a UTF-8 str key
    assert (bs.key, bs.value) == ("k\u00e9", b"\x00\x01") and type(bs.value) is bytes
    assert decode([b"2bbkey", b"\x00"]).key == b"key"
    jb = decode([b"2jb\xff", b"[1,2]"])
    assert (jb.key, jb.value) == (b"\xff", [1, 2])


def test_decode_fields_of_a_format2_custom_value_with_and_without_a_deserializer() -> None:
    seen: list[bytes] = []

    def de(data: bytes) -> Any:
        seen.append(data)
        return ("decoded", data)

    with_de = decode_fields("t", 0, ENTRY_ID, 1, [b"2cbk\x00", b"payload"], de)
    assert (with_de.key, with_de.value) == (b"k\x00", ("decoded", b"payload")) and seen == [b"payload"]
    without = decode_fields("t", 0, ENTRY_ID, 1, [b"2cbk\x00", b"payload"], None)
    assert (without.key, without.value) == (b"k\x00", b"payload")  # a custom value stays its bytes
    # with a deserializer, a JSON value goes through it too (as in format 1), keyless or not
    assert decode_fields("t", 0, ENTRY_ID, 1, [b"2jsk", b"1"], de).value == ("decoded", b"1")
    assert decode_fields("t", 0, ENTRY_ID, 1, [b"2jn", b"2"], de).value == ("decoded", b"2")
    # raw bytes never go through the deserializer
    assert decode_fields("t", 0, ENTRY_ID, 1, [b"2bn", b"3"], de).value == b"3"
    assert seen == [b"payload", b"1", b"2"]


def test_a_failing_deserializer_on_a_format2_entry_is_decode_error() -> None:
    def de(b: bytes) -> Any:
        raise RuntimeError("user code broke")

    with pytest.raises(DecodeError, match="RuntimeError: user code broke"):
        decode_fields("t", 0, ENTRY_ID, 1, [b"2cs", b"x"], de)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ([b"2jsk", b"{not json"], "JSONDecodeError"),
        ([b"2jn", b""], "JSONDecodeError"),
        ([b"2js\xff", b"1"], "UnicodeDecodeError"),  # a str key that is not UTF-8
        ([b"2bs\xff", b"1"], "UnicodeDecodeError"),
        ([b"2zzk", b"x"], "missing format field"),
        ([b"hello", b"x"], "missing format field"),
    ],
)
def test_corrupt_format2_entries_raise_decode_error(fields: list[bytes], reason: str) -> None:
    for de in (None, orjson.loads):
        with pytest.raises(DecodeError, match=re.escape(reason)):
            decode_fields("t", 0, ENTRY_ID, 1, fields, de)


def test_a_corrupt_format2_entry_id_is_decode_error() -> None:
    with pytest.raises(DecodeError, match="ValueError"):
        decode_fields("t", 0, b"not-an-id", 1, [b"2jsk", b"1"], None)


@given(json_values, keys, st.integers(1, 1000))
def test_format2_decodes_exactly_as_format1(value: Any, key: str | bytes | None, attempts: int) -> None:
    one = decode_fields("t", 1, ENTRY_ID, attempts, format1_flat(value, key), None)
    two = decode_fields("t", 1, ENTRY_ID, attempts, format2_flat(value, key), None)
    assert two == one == Message("t", 1, "1700000000123-0", key, value, {}, TS, attempts, None)
    assert type(two.key) is type(key)
    # the same through the slots (the path a dead letter and a re-read take)
    slots2 = entry_slots(ENTRY_ID, attempts, format2_flat(value, key))
    assert slots2 == entry_slots(ENTRY_ID, attempts, format1_flat(value, key))


@given(st.binary(max_size=60), text, keys)
def test_format2_bytes_and_custom_values_decode_exactly_as_format1(
    data: bytes, custom: str, key: str | bytes | None
) -> None:
    one = decode_fields("t", 0, ENTRY_ID, 1, format1_flat(data, key), None)
    two = decode_fields("t", 0, ENTRY_ID, 1, format2_flat(data, key), None)
    assert two == one and type(two.key) is type(key)
    assert two.value == data and type(two.value) is bytes  # bytes pass untouched

    def ser(v: str) -> bytes:
        return b"X" + v.encode()

    def de(b: bytes) -> str:
        assert b[:1] == b"X"
        return b[1:].decode()

    assert format2_flat(custom, key, ser)[0][:2] == b"2c"
    for deserializer, expected in ((de, custom), (None, ser(custom))):
        one = decode_fields("t", 0, ENTRY_ID, 1, format1_flat(custom, key, ser), deserializer)
        two = decode_fields("t", 0, ENTRY_ID, 1, format2_flat(custom, key, ser), deserializer)
        assert two == one and type(two.key) is type(key)
        assert two.value == expected


def _common(i: int, key: str | None) -> tuple[bytes, list[bytes]]:
    name = b"2jn" if key is None else b"2js" + key.encode()
    return f"17000000{i:05d}-{i}".encode(), [name, orjson.dumps({"i": i, "k": key})]


def test_a_fresh_common_batch_decodes_in_one_pass_exactly_as_one_by_one() -> None:
    entries = [_common(i, None if i % 3 == 0 else f"user-{i}") for i in range(50)]
    decoded = decode_fresh("t", 2, entries)
    assert decoded is not None
    messages, ids = decoded
    assert messages == [decode_fields("t", 2, e, 1, f, None) for e, f in entries]
    assert ids == [e.decode() for e, _ in entries]
    assert messages[1].timestamp == 1700000000001 and messages[0].key is None and messages[1].attempts == 1


@pytest.mark.parametrize("odd", [
    [b"f", b"1js", b"v", b"{}", b"k", b"a"],  # format 1: decoded one by one
    [b"2js" + "ü".encode()[:1], b"{}"],  # a key that is not UTF-8: one by one says so
    [b"2jsk", b"{not json"],  # a value that does not decode: one by one dead-letters it
    [b"2bsk", b"raw"],  # a bytes value
    [b"2jnx", b"{}"],  # no key, but more after the codec letters
    None,  # an entry deleted while pending
])
def test_a_fresh_batch_with_any_other_entry_goes_one_by_one(odd: list[bytes] | None) -> None:
    entries: list[Any] = [_common(i, "k") for i in range(5)]
    entries.insert(3, (b"1700000000000-9", odd))
    assert decode_fresh("t", 0, entries) is None

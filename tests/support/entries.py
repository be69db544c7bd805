"""Raw stream entries read back with XRANGE, whichever format the producer wrote.

The producer writes the common record (no headers, no TTL, no dedup key) as a
format-2 entry of ONE field: its name is ``b"2"``, the codec letter (j JSON, b bytes,
c custom), the key type letter (n none, s str, b bytes), then the key bytes; its value
is the value bytes. Anything else is format 1 (fields f, v, k, h, x; serde.py).

:func:`as_fields` gives the format-1 view of either, so a test reading values or keys
back does not depend on which format a record was written in. It is written here on
its own, not with ``redcurrent.serde``, so the tests check the library against the
format as documented rather than against itself.
"""

from __future__ import annotations

from collections.abc import Mapping

CODECS = b"jbc"  # JSON, raw bytes, custom serializer
KEY_TYPES = b"nsb"  # no key, str, bytes


def format2_name(name: bytes) -> bool:
    """Whether ``name`` is a valid format-2 field name: "2", a codec, a key type, the key
    (no key bytes after the key type ``n``)."""
    return (
        len(name) >= 3
        and name[0:1] == b"2"
        and name[1] in CODECS
        and name[2] in KEY_TYPES
        and (name[2:3] != b"n" or len(name) == 3)
    )


def as_fields(fields: Mapping[bytes, bytes]) -> dict[bytes, bytes]:
    """The format-1 view ``{f, v[, k]}`` of a format-2 entry; any other entry's fields
    unchanged (as a new dict). A keyless record has no ``k``, as in format 1."""
    if len(fields) == 1:
        [(name, value)] = fields.items()
        if isinstance(name, bytes) and format2_name(name):
            out = {b"f": b"1" + name[1:3], b"v": value}
            if name[2:3] != b"n":
                out[b"k"] = name[3:]
            return out
    return dict(fields)


def format2(codec: bytes, key: str | bytes | None, value: bytes) -> dict[bytes, bytes]:
    """The one field of the format-2 entry for a record: ``{b"2" + codec + key type + key: value}``."""
    if key is None:
        return {b"2" + codec + b"n": value}
    if isinstance(key, str):
        return {b"2" + codec + b"s" + key.encode(): value}
    return {b"2" + codec + b"b" + key: value}

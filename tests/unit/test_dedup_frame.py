"""A record's dedup key travels in its frame (lua/produce.lua): split and routed again
unchanged when the producer moves records to other partitions (growth, recreation)."""

from __future__ import annotations

from redcurrent import Producer
from redcurrent.accumulator import DEDUP_FLAG, route_bytes, split_records


def test_split_keeps_the_dedup_key_and_routes_by_it_without_a_key() -> None:
    producer = Producer("redis://unused")
    framed = [
        producer._encode("t", {"a": 1}, "k1", None, None, b"d-1")[0],
        producer._encode("t", b"raw", None, {"h": "v"}, 5.0, b"d-2")[0],
        producer._encode("t", 3, None, None, None)[0],
        producer._encode("t", 4, b"bk", None, None)[0],
    ]
    blob = b"".join(part for record in framed for part in record)
    parts = split_records(blob)
    assert len(parts) == 4
    for (header, kb, data, hb, tail), record in zip(parts, framed, strict=True):
        assert (header, kb, data + hb + tail) == record  # re-framed byte for byte
    assert [bool(p[0][0] & DEDUP_FLAG) for p in parts] == [True, True, False, False]
    assert [route_bytes(h, kb, tail) for h, kb, _, _, tail in parts] == [b"k1", b"d-2", None, b"bk"]

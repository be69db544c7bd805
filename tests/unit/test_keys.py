"""keys.py: every key carries the hash tag of its slot, and names cannot break the tags.

Topic-level and group coordination keys share ``{topic}``; partition-level
keys share ``{topic:partition}``. A slot is computed here exactly as Redis Cluster does
(``redis.crc.key_slot`` on the key bytes), not by re-parsing the key in the test.
"""

from __future__ import annotations

import inspect

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.crc import key_slot

from redcurrent import ConfigError
from redcurrent.keys import MAX_NAME_LENGTH, Keys, validate_name

NAME_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-"
names = st.text(alphabet=NAME_CHARS, min_size=1, max_size=MAX_NAME_LENGTH)
# What validate_name accepts: not only dots, no leading '-'.
valid_names = names.filter(lambda n: n.strip(".") != "" and not n.startswith("-"))
namespaces = st.text(alphabet=NAME_CHARS, min_size=1, max_size=64)


def slot(key: str) -> int:
    return key_slot(key.encode())


def key_families(k: Keys, topic: str, partition: int, group: str, pid: str) -> dict[str, list[str]]:
    """Every key-building method of Keys, called by its parameter names, sorted by level.

    Found by introspection, so a key family added later is checked without editing here.
    """
    values = {"topic": topic, "partition": partition, "group": group, "producer_id": pid,
              "instance_id": "0123456789abcdef", "dedup_key": "order-1", "transactional_id": "tx-1"}
    levels: dict[str, list[str]] = {"registry": [], "topic": [], "partition": [], "producer": []}
    for name, method in inspect.getmembers(Keys, inspect.isfunction):
        if name.startswith("_") or name == "partition_keys_pattern":  # a SCAN pattern, not a key
            continue
        if name in ("learn", "anchor"):  # co-location bookkeeping, not keys
            continue
        params = [p for p in inspect.signature(method).parameters if p != "self"]
        unknown = set(params) - set(values)
        assert not unknown, f"Keys.{name} takes {unknown}: teach this test about it"
        built = method(k, **{p: values[p] for p in params})
        keys = built if isinstance(built, list) else [built]
        level = (
            "partition" if "partition" in params else "topic" if "topic" in params
            else "producer" if "transactional_id" in params else "registry"
        )
        levels[level].extend(keys)
    return levels


def topic_level_keys(k: Keys, topic: str, group: str) -> list[str]:
    return key_families(k, topic, 0, group, "p")["topic"]


def partition_level_keys(k: Keys, topic: str, partition: int, group: str) -> list[str]:
    families = key_families(k, topic, partition, group, "0123456789abcdef0123456789abcdef")
    return families["partition"] + [k.producer_seq(topic, partition, "-")]


def test_dedup_key_is_its_prefix_and_the_dedup_key() -> None:
    """The produce script builds a dedup key as prefix .. D: the same string as Keys.dedup."""
    k = Keys("rc")
    assert k.dedup_prefix("orders", 3) + "a{b}:c" == k.dedup("orders", 3, "a{b}:c")
    assert key_slot(b"orders:3") == key_slot(k.dedup("orders", 3, "{x}").encode())


def test_transactional_producer_keys_share_their_own_tag() -> None:
    k = Keys("rc")
    assert k.producer_epoch("tx-1") == "rc:producer:{tx-1}:epoch"
    assert {key_slot(k.producer_epoch("tx-1").encode()), key_slot(k.producer_partitions("tx-1").encode())} == {
        key_slot(b"tx-1")}


def test_every_key_family_is_classified() -> None:
    families = key_families(Keys("rc"), "orders", 3, "billing", "p1")
    # the keys without a tag: the topic registry and a consumer instance's doorbell
    assert families["registry"] == ["rc:doorbell:0123456789abcdef", "rc:topics"]
    assert "rc:{orders}:meta" in families["topic"]
    assert "rc:{orders:3}" in families["partition"]
    assert len(families["topic"]) >= 6 and len(families["partition"]) >= 3


@given(namespaces, names, names, names, st.integers(0, 9999))
def test_colocated_partition_keys_share_the_anchors_slot(
    ns: str, topic: str, anchor: str, group: str, partition: int
) -> None:
    """docs/architecture.md "Co-located topics": partition P of a topic co-located with
    A lives in A's partition P slot, and its keys are none of A's (nor another topic's)."""
    k = Keys(ns)
    anchor_keys = set(partition_level_keys(k, anchor, partition, group))
    k.learn(topic, anchor)
    expected = key_slot(f"{anchor}:{partition}".encode())
    for key in partition_level_keys(k, topic, partition, group):
        assert slot(key) == expected, key
        assert key.startswith(f"{ns}:@{topic}:{{{anchor}:{partition}}}")
        assert key not in anchor_keys or topic == anchor
    k.learn(topic, None)
    assert k.stream(topic, partition) == f"{ns}:{{{topic}:{partition}}}"


@given(namespaces, names, names)
def test_topic_keys_share_the_topic_tag(ns: str, topic: str, group: str) -> None:
    k = Keys(ns)
    expected = key_slot(topic.encode())
    for key in topic_level_keys(k, topic, group):
        assert f"{{{topic}}}" in key
        assert slot(key) == expected, key


@given(namespaces, names, names, st.integers(0, 9999))
def test_partition_keys_share_the_topic_partition_tag(
    ns: str, topic: str, group: str, partition: int
) -> None:
    k = Keys(ns)
    expected = key_slot(f"{topic}:{partition}".encode())
    for key in partition_level_keys(k, topic, partition, group):
        assert f"{{{topic}:{partition}}}" in key
        assert slot(key) == expected, key


def test_partition_keys_pattern_matches_every_partition_key_of_the_topic() -> None:
    import fnmatch

    k = Keys("rc")
    pattern = k.partition_keys_pattern("orders")
    for p in (0, 3, 30):
        for key in partition_level_keys(k, "orders", p, "billing"):
            assert fnmatch.fnmatchcase(key, pattern)
    # and none of the topic-slot keys or another topic's partitions
    assert not fnmatch.fnmatchcase(k.meta("orders"), pattern)
    assert not fnmatch.fnmatchcase(k.stream("orders2", 0), pattern)
    assert not fnmatch.fnmatchcase(k.dead_letters("orders", "g"), pattern)


def test_known_key_layout() -> None:
    k = Keys("app")
    assert k.topics() == "app:topics"
    assert k.meta("orders") == "app:{orders}:meta"
    assert k.stream("orders", 3) == "app:{orders:3}"
    assert k.owner("orders", 3, "billing") == "app:{orders:3}:owner:billing"
    assert k.producer_seq("orders", 3, "p1") == "app:{orders:3}:pseq:p1"
    assert Keys().namespace == "rc"
    assert Keys().stream("t", 0).startswith("rc:")


def test_partitions_of_one_topic_spread_over_slots() -> None:
    """Different partitions are different slots (hence can live on different nodes)."""
    k = Keys("rc")
    slots = {slot(k.stream("orders", p)) for p in range(64)}
    assert len(slots) > 60


def test_namespaces_do_not_share_keys() -> None:
    a, b = Keys("app1"), Keys("app2")
    assert a.stream("t", 0) != b.stream("t", 0)
    assert a.meta("t") != b.meta("t")
    assert a.topics() != b.topics()
    # but the slot is the same: the namespace is outside the tag
    assert slot(a.stream("t", 0)) == slot(b.stream("t", 0))


# ----------------------------------------------------------------------------- validation


@given(valid_names)
def test_valid_names_pass_unchanged(name: str) -> None:
    assert validate_name(name) == name
    assert validate_name(name, "group") == name


@pytest.mark.parametrize(
    "bad",
    [
        "a:b",  # would split the {topic:partition} tag
        "{orders}",
        "or{ders",
        "orders}",
        "with space",
        "tab\t",
        "new\nline",
        "slash/",
        "star*",  # would be a SCAN pattern
        "q?",
        "br[a]ck",
        "é",
        "ключ",
        "emoji🙂",
    ],
)
def test_invalid_characters_raise_value_error_naming_allowed_chars(bad: str) -> None:
    with pytest.raises(ValueError, match=r"use only letters, digits, '\.', '_' and '-'") as err:
        validate_name(bad)
    assert repr(bad) in str(err.value)
    assert "topic" in str(err.value)


@pytest.mark.parametrize("bad", [".", "..", "...", "." * MAX_NAME_LENGTH])
def test_names_made_only_of_dots_raise_config_error(bad: str) -> None:
    with pytest.raises(ConfigError, match="cannot be made only of dots") as err:
        validate_name(bad)
    assert repr(bad) in str(err.value) and "topic" in str(err.value)


@pytest.mark.parametrize("bad", ["-", "--", "-orders", "--partitions", "-.-"])
def test_names_starting_with_a_dash_raise_config_error(bad: str) -> None:
    """A topic called ``-p`` could not be named on the command line without ``--``."""
    with pytest.raises(ConfigError, match="cannot start with '-'") as err:
        validate_name(bad, "group")
    assert repr(bad) in str(err.value) and "group" in str(err.value)


@pytest.mark.parametrize("good", [".orders", "orders.", "a..b", "o-", "_-x", "1", ".-"])
def test_dots_and_dashes_inside_a_name_are_fine(good: str) -> None:
    assert validate_name(good) == good


def test_every_name_rule_raises_config_error() -> None:
    for bad in ("", "x" * (MAX_NAME_LENGTH + 1), "a:b", "..", "-x"):
        with pytest.raises(ConfigError):
            validate_name(bad)


def test_error_names_what_was_validated() -> None:
    with pytest.raises(ValueError, match="invalid group name"):
        validate_name("a:b", "group")


def test_empty_name_raises_value_error() -> None:
    with pytest.raises(ValueError, match=f"1 to {MAX_NAME_LENGTH} characters, got 0"):
        validate_name("")


def test_name_length_limit() -> None:
    assert validate_name("x" * MAX_NAME_LENGTH) == "x" * MAX_NAME_LENGTH
    with pytest.raises(
        ValueError, match=f"1 to {MAX_NAME_LENGTH} characters, got {MAX_NAME_LENGTH + 1}"
    ):
        validate_name("x" * (MAX_NAME_LENGTH + 1))


@pytest.mark.parametrize("bad", [None, 1, b"orders", ["orders"], 1.5])
def test_non_str_name_raises_type_error(bad: object) -> None:
    with pytest.raises(TypeError, match=f"topic name must be str, not {type(bad).__name__}"):
        validate_name(bad)


@given(namespaces)
def test_valid_namespaces(ns: str) -> None:
    assert Keys(ns).namespace == ns


@pytest.mark.parametrize("bad", ["", "a:b", "{x}", "a b", "x" * 65, "é", "a*", None, 3, b"rc"])
def test_invalid_namespace_raises_value_error(bad: object) -> None:
    with pytest.raises(ValueError, match=r"invalid namespace .*1 to 64 of letters, digits"):
        Keys(bad)  # type: ignore[arg-type]


def test_keys_is_frozen() -> None:
    import dataclasses

    k = Keys("rc")
    with pytest.raises(dataclasses.FrozenInstanceError):
        k.namespace = "other"  # type: ignore[misc]

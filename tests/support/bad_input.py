"""The bad-input suite's strategies and checks, shared by its server-free half
(tests/unit/test_bad_arguments.py) and the half that needs a server
(tests/integration/test_bad_input.py).

Strategies draw good and bad values, keys, headers, partitions and ttls; ``junk`` draws
anything. ``CONSTRUCTORS`` maps each public constructor argument to a call with a drawn
value and to the predicate saying whether that value is valid. A rejected argument must
raise one of ``TYPED`` with a message (``raises_typed``).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

import redcurrent
from redcurrent import (
    Admin,
    Backoff,
    Consumer,
    Producer,
    RedcurrentError,
    RetryPolicy,
)
from redcurrent.keys import Keys
from redcurrent.serde import RESERVED_HEADER_PREFIX

EXAMPLES = 500
fuzz = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)
TYPED = (TypeError, ValueError, RedcurrentError)  # what a rejected argument may raise
PARTITIONS = 3  # of every topic the suite creates


# --------------------------------------------------------------------------- strategies


class Opaque:
    """An object no serializer knows."""

    def __repr__(self) -> str:
        return "<Opaque>"


text = st.text(st.characters(exclude_categories=("Cs",)), max_size=20)  # no lone surrogates
surrogate_text = st.builds(lambda a, s, b: a + s + b, text, st.characters(categories=("Cs",)), text)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)  # orjson's integer range
    | st.floats(allow_nan=False, allow_infinity=False)
    | text
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(text, children, max_size=4),
    max_leaves=12,
)
good_values = json_values | st.binary(max_size=300)
good_keys = st.none() | text | st.binary(max_size=40)


def good_header_name(name: str) -> bool:
    """Names starting with "rc-" are redcurrent's own (the requeue header among them) and
    refused: see test_reserved_header_names_are_rejected_before_anything_is_written."""
    return not name.startswith(RESERVED_HEADER_PREFIX)


good_headers = st.none() | st.dictionaries(text.filter(good_header_name), text, max_size=5)

# A leaf orjson cannot encode. (NaN and infinity are not here: orjson wrote them as
# null, a bug pinned by its own regression test below.)
unencodable_leaf = st.one_of(
    st.sets(st.integers(), max_size=3),
    st.frozensets(text, max_size=3),
    st.builds(Opaque),
    st.complex_numbers(allow_nan=False, allow_infinity=False),
    st.integers(min_value=2**64),
    st.integers(max_value=-(2**63) - 1),
    surrogate_text,
    st.binary(max_size=10),  # bytes inside a structure: only a top-level value may be bytes
    st.decimals(allow_nan=False, allow_infinity=False),
    st.just(range(3)),
)
bad_values = st.one_of(
    unencodable_leaf.filter(lambda v: not isinstance(v, bytes)),
    st.tuples(st.lists(json_values, max_size=3), unencodable_leaf).map(lambda t: [*t[0], t[1]]),
    st.tuples(st.dictionaries(text, json_values, max_size=3), unencodable_leaf).map(
        lambda t: {**t[0], "bad": t[1]}
    ),
    st.dictionaries(  # keys must be str
        st.integers()
        | st.booleans()
        | st.none()
        | st.tuples(st.integers())
        | st.binary(max_size=3),
        json_values,
        min_size=1,
        max_size=3,
    ),
    st.dictionaries(surrogate_text, json_values, min_size=1, max_size=2),
)
bad_keys = st.one_of(
    st.integers(),
    st.floats(),
    st.booleans(),
    st.builds(bytearray, st.binary(max_size=8)),
    st.builds(memoryview, st.binary(max_size=8)),
    st.lists(text, max_size=3),
    st.tuples(text),
    st.dictionaries(text, text, max_size=2),
    st.builds(Opaque),
    surrogate_text,
)
# Truthy non-mappings and mappings with non-str entries. (Falsy non-mappings such as
# 0, "" and [] were silently taken for "no headers": pinned by its own test below.)
bad_headers = st.one_of(
    st.lists(st.tuples(text, text), min_size=1, max_size=3),
    text.filter(bool),
    st.integers().filter(bool),
    st.builds(Opaque),
    st.sets(text, min_size=1, max_size=3),
    st.dictionaries(
        st.integers() | st.none() | st.binary(max_size=4), text, min_size=1, max_size=3
    ),
    st.dictionaries(
        text,
        st.integers() | st.none() | st.binary(max_size=4) | st.lists(text, max_size=2),
        min_size=1,
        max_size=3,
    ),
    st.dictionaries(surrogate_text, text, min_size=1, max_size=2),
    st.dictionaries(text, surrogate_text, min_size=1, max_size=2),
)
bad_partitions = st.one_of(
    st.booleans(),
    st.floats(),
    text,
    st.integers(max_value=-1),
    st.integers(min_value=PARTITIONS),
    st.builds(Opaque),
    st.decimals(allow_nan=False),
)
# Non-positive, non-finite and non-numeric. (A huge finite ttl such as 1e300 crashed
# the encoder with struct.error: pinned by its own test below.)
bad_ttls = st.one_of(
    st.floats(max_value=0.0),
    st.just(math.nan),
    st.just(math.inf),
    st.integers(max_value=0),
    text,
    st.booleans(),
    st.lists(st.integers(), max_size=2),
    st.builds(Opaque),
)
junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    text,
    st.binary(max_size=10),
    st.lists(st.integers(), max_size=3),
    st.tuples(st.integers()),
    st.dictionaries(text, st.integers(), max_size=2),
    st.sets(st.integers(), max_size=2),
    st.builds(Opaque),
    st.sampled_from(
        [
            0,
            -1,
            1,
            3,
            0.5,
            -0.5,
            1e9,
            math.nan,
            math.inf,
            -math.inf,
            "",
            "x",
            "3",
            "a:b",
            "earliest",
            "latest",
            "1-0",
            "t",
            "g",
            b"t",
            [],
            {},
            (),
            set(),
        ]
    ),
)


# --------------------------------------------------------------------------- checks


def assert_typed(exc: BaseException, *allowed: type[BaseException]) -> None:
    """``exc`` is one of ``allowed`` (default: TypeError/ValueError/RedcurrentError), has a
    message, and is none of the errors that betray a missing check."""
    allowed = allowed or TYPED
    assert isinstance(exc, allowed), f"{type(exc).__name__}: {exc}"
    assert not isinstance(exc, AttributeError | KeyError | IndexError | OverflowError), repr(exc)
    assert str(exc).strip(), f"{type(exc).__name__} without a message"


async def raises_typed(call: Callable[[], Any], *allowed: type[BaseException]) -> BaseException:
    try:
        result = call()
        if isinstance(result, Awaitable):
            await result
    except Exception as exc:
        assert_typed(exc, *allowed)
        return exc
    raise AssertionError("accepted")


# --------------------------------------------------------------------------- constructor arguments


def is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def is_positive(v: object) -> bool:
    return is_number(v) and math.isfinite(v) and v > 0  # type: ignore[operator, arg-type]


def is_non_negative(v: object) -> bool:
    return is_number(v) and math.isfinite(v) and v >= 0  # type: ignore[operator, arg-type]


def is_positive_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def is_name(v: object) -> bool:
    try:
        return isinstance(v, str) and redcurrent.keys.validate_name(v) == v
    except ValueError:
        return False


def is_namespace(v: object) -> bool:
    try:
        Keys(v)  # type: ignore[arg-type]
        return True
    except ValueError:
        return False


def optional(check: Callable[[object], bool]) -> Callable[[object], bool]:
    return lambda v: v is None or check(v)


def is_member_id(v: object) -> bool:
    return isinstance(v, str) and 0 < len(v) <= 200 and "|" not in v


URL = "redis://127.0.0.1:1"  # constructors connect lazily: never reached

# name -> (make the call with the junk value, is that value valid?)
CONSTRUCTORS: dict[str, tuple[Callable[[Any], Any], Callable[[object], bool]]] = {
    "Producer.namespace": (lambda v: Producer(URL, namespace=v), is_namespace),
    "Producer.linger": (lambda v: Producer(URL, linger=v), is_non_negative),
    "Producer.batch_size": (lambda v: Producer(URL, batch_size=v), is_positive_int),
    "Producer.max_message_bytes": (lambda v: Producer(URL, max_message_bytes=v), is_positive_int),
    "Producer.default_partitions": (lambda v: Producer(URL, default_partitions=v), is_positive_int),
    "Producer.serializer": (lambda v: Producer(URL, serializer=v), optional(callable)),
    "Producer.request_timeout": (lambda v: Producer(URL, request_timeout=v), is_positive),
    "Producer.metadata_max_age": (lambda v: Producer(URL, metadata_max_age=v), is_positive),
    "Producer.acks": (lambda v: Producer(URL, acks=v), lambda v: v in ("leader", "replica")),
    "Consumer.topic": (lambda v: Consumer(v, group="g", url=URL), is_name),
    "Consumer.second_topic": (lambda v: Consumer("t", v, group="g", url=URL), is_name),
    "Consumer.group": (lambda v: Consumer("t", group=v, url=URL), is_name),
    "Consumer.namespace": (lambda v: Consumer("t", group="g", url=URL, namespace=v), is_namespace),
    "Consumer.member_id": (
        lambda v: Consumer("t", group="g", url=URL, member_id=v),
        optional(is_member_id),
    ),
    "Consumer.start": (
        lambda v: Consumer("t", group="g", url=URL, start=v),
        lambda v: v in ("latest", "earliest"),
    ),
    "Consumer.batch_size": (
        lambda v: Consumer("t", group="g", url=URL, batch_size=v),
        is_positive_int,
    ),
    "Consumer.max_in_flight": (
        lambda v: Consumer("t", group="g", url=URL, max_in_flight=v),
        is_positive_int,
    ),
    "Consumer.heartbeat_interval": (
        lambda v: Consumer("t", group="g", url=URL, heartbeat_interval=v),
        lambda v: is_positive(v) and v <= 5.0,  # type: ignore[operator]
    ),
    "Consumer.session_timeout": (
        lambda v: Consumer("t", group="g", url=URL, session_timeout=v),
        lambda v: is_positive(v) and v >= 2.0,  # type: ignore[operator]
    ),
    "Consumer.rebalance_timeout": (
        lambda v: Consumer("t", group="g", url=URL, rebalance_timeout=v),
        is_positive,
    ),
    "Consumer.block": (lambda v: Consumer("t", group="g", url=URL, block=v), is_positive),
    "Consumer.assignor": (
        lambda v: Consumer("t", group="g", url=URL, assignor=v),
        lambda v: v in ("round_robin", "sticky"),
    ),
    "Consumer.deserializer": (
        lambda v: Consumer("t", group="g", url=URL, deserializer=v),
        optional(callable),
    ),
    "Consumer.max_attempts": (
        lambda v: Consumer("t", group="g", url=URL, max_attempts=v),
        is_positive_int,
    ),
    "Consumer.backoff": (
        lambda v: Consumer("t", group="g", url=URL, backoff=v),
        optional(lambda v: isinstance(v, Backoff)),
    ),
    "Consumer.handler_timeout": (
        lambda v: Consumer("t", group="g", url=URL, handler_timeout=v),
        optional(is_positive),
    ),
    "Consumer.processing_timeout": (
        lambda v: Consumer("t", group="g", url=URL, processing_timeout=v),
        optional(is_positive),
    ),
    "Admin.namespace": (lambda v: Admin(URL, namespace=v), is_namespace),
    "Backoff.initial": (lambda v: Backoff(initial=v), is_non_negative),
    "Backoff.max": (lambda v: Backoff(max=v), is_non_negative),
    # NaN passes (``nan < 1`` is False); harmless, since min(max, nan) is max.
    "Backoff.multiplier": (lambda v: Backoff(multiplier=v), lambda v: is_number(v) and not v < 1),  # type: ignore[operator]
    # A bool passes as 0 or 1 (``True`` is an int).
    "Backoff.jitter": (
        lambda v: Backoff(jitter=v),
        lambda v: isinstance(v, int | float) and 0 <= v <= 1,
    ),
    "RetryPolicy.max_attempts": (lambda v: RetryPolicy(max_attempts=v), is_positive_int),
    "RetryPolicy.backoff": (lambda v: RetryPolicy(backoff=v), lambda v: isinstance(v, Backoff)),
    "Retry.after": (lambda v: redcurrent.Retry(after=v), optional(is_non_negative)),
}

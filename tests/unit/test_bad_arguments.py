"""Bad input to the public constructors is refused with a typed error, before any I/O.

The server-free half of the bad-input suite (the other half, with a server, is
tests/integration/test_bad_input.py; both draw from ``support.bad_input``): every
constructor argument gets hypothesis junk (500 examples) and must raise TypeError,
ValueError or a redcurrent error with a message, never AttributeError & co; the good
header strategy never draws a reserved name.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from support.bad_input import (
    CONSTRUCTORS,
    EXAMPLES,
    URL,
    fuzz,
    good_header_name,
    good_headers,
    junk,
    raises_typed,
)

import redcurrent
from redcurrent import (
    ConfigError,
    Consumer,
    RetryPolicy,
)
from redcurrent.serde import REQUEUE_HEADER, RESERVED_HEADER_PREFIX


def test_good_headers_never_draw_a_reserved_name() -> None:
    """Hypothesis draws string constants it finds in the code under test, "rc-" among
    them: the strategy must leave out the whole reserved prefix, not one header."""
    for name in ("rc-", "rc-x", REQUEUE_HEADER, RESERVED_HEADER_PREFIX + "trace"):
        assert not good_header_name(name), name

    @settings(max_examples=EXAMPLES, deadline=None, database=None)
    @given(headers=good_headers)
    def check(headers: Any) -> None:
        redcurrent.serde.encode_headers(headers)  # what the producer runs on them

    check()


def test_wrong_types_to_constructors_raise_typed_errors(runner: asyncio.Runner) -> None:
    runs: list[None] = []

    @fuzz
    @given(case=st.sampled_from(sorted(CONSTRUCTORS)), value=junk)
    def check(case: str, value: Any) -> None:
        make, valid = CONSTRUCTORS[case]
        assume(not valid(value))
        runs.append(None)
        runner.run(raises_typed(lambda: make(value)))

    check()
    assert len(runs) >= EXAMPLES


def test_non_callable_listeners_are_rejected() -> None:
    for name in ("on_assign", "on_revoke", "on_lost"):
        with pytest.raises((TypeError, ConfigError)):
            Consumer("t", group="g", url=URL, **{name: 5})


def test_topic_retry_must_be_a_mapping() -> None:
    for value in ([("t", RetryPolicy())], 5, "t"):
        with pytest.raises((TypeError, ConfigError)) as err:
            Consumer("t", group="g", url=URL, topic_retry=value)  # type: ignore[arg-type]
        assert "topic_retry" in str(err.value), err.value  # names what to fix

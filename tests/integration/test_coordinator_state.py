"""The group coordinator, driven as a state machine against a real server (docs/architecture.md §3).

A hypothesis ``RuleBasedStateMachine`` calls the coordinator itself — the ``heartbeat``
Lua script, through ``redcurrent.scripts.run`` with the keys from ``Keys.coordinator`` —
with random sequences of join, leave, crash, heartbeat, restart with a new instance,
a stale instance's heartbeat, partition growth, an assignor switch and a coordinator
gap. A model of the membership predicts every reply; after each step the stored state
must say:

* the assignment covers every partition exactly once, over exactly the members the
  coordinator holds (complete, never overlapping), and is balanced (max - min <= 1);
* round-robin gives partition p to the (p mod n)-th member in id order;
* no member whose deadline has passed holds a partition after a script ran;
* the epoch only grows, and grows by exactly one on a call that saw a membership or
  partition-count change (never on any other call);
* sticky never moves a partition away from a member that stays alive unless that
  member holds more than its balanced share;
* a gap (now - last_tick > max(S/2, 3H)) re-arms every deadline: a member that
  "crashed" before the gap is alive after it, and the reply says ``rearmed``.

A crash is simulated as the coordinator sees one: the member's deadline (Redis clock,
ms) is moved into the past in the deadlines zset. The session is 10 minutes, so the
gap rule never fires by itself; the ``coordinator_gap`` rule provokes it on purpose.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, ClassVar

import orjson
import pytest
import redis.asyncio
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from redcurrent import scripts
from redcurrent.keys import Keys

GROUP = "g"
SESSION_MS = 600_000  # gap threshold max(S/2, 3H) = 5 minutes: never reached by accident
HEARTBEAT_MS = 1_000
ASSIGNORS = ("round_robin", "sticky")
HEARTBEAT = scripts.script("heartbeat")

# Member ids that shake the script's sort order and cjson's escaping.
member_ids = st.text('ab09-._/\\" é', min_size=1, max_size=5)


class CoordinatorMachine(RuleBasedStateMachine):
    """Model: ``registry`` is what the coordinator holds (member id -> instance);
    ``crashed`` are members of it whose deadline was moved into the past."""

    runner: ClassVar[asyncio.Runner]
    client: ClassVar[redis.asyncio.Redis]
    namespace: ClassVar[str]

    def __init__(self) -> None:
        super().__init__()
        self.topic = "c" + uuid.uuid4().hex[:10]
        keys = Keys(self.namespace)
        self.keys = keys.coordinator(self.topic, GROUP)
        self.meta, self.deadlines, self.state = self.keys[0], self.keys[3], self.keys[4]
        self.registry: dict[str, str] = {}
        self.crashed: set[str] = set()
        self.retired: dict[str, str] = {}  # member -> an instance that is no longer current
        self.partitions = 0
        self.created: int | None = None
        self.assigned_partitions: int | None = None  # partition count of the last computation
        self.assignor = "round_robin"
        self.epoch = 0
        self.gap_pending = False
        self.assignment: dict[str, list[int]] | None = None

    # -- plumbing
    def run(self, coro: Any) -> Any:
        return self.runner.run(coro)

    async def _now_ms(self) -> int:
        sec, usec = await self.client.time()
        return int(sec) * 1000 + int(usec) // 1000

    def stored(self) -> tuple[int, int, dict[str, list[int]]]:
        raw = self.run(self.client.hmget(self.state, ["epoch", "partitions", "assignment"]))
        decoded = orjson.loads(raw[2]) if raw[2] else {}
        # cjson writes an empty Lua table as {} rather than []
        assignment = {m: sorted(ps) if isinstance(ps, list) else [] for m, ps in decoded.items()}
        return int(raw[0] or 0), int(raw[1] or 0), assignment

    def call(self, op: str, member: str, instance: str) -> list[Any]:
        """Run the coordinator once and check its reply and state against the model."""
        now = self.run(self._now_ms())
        args = [GROUP, member, instance, SESSION_MS, HEARTBEAT_MS, op, "{}", self.assignor]
        reply = self.run(scripts.run(self.client, HEARTBEAT, self.keys, args))
        expected_status, changed, rearmed = self._predict(op, member, instance)
        assert reply[0].decode() == expected_status, (reply, op, member)
        epoch, partitions, assignment = self.stored()
        if expected_status in ("FENCED", "REPLACED"):
            assert epoch == self.epoch
            return reply
        assert int(reply[5]) == rearmed, "gap detection disagrees with the model"
        assert int(reply[1]) == epoch
        assert int(reply[2]) == self.partitions == partitions
        if self.created is None:
            self.created = self.partitions  # the group's first successful call
        assert int(reply[3]) == self.created  # partitions at the group's creation: fixed
        # The epoch bumps exactly once per call that changed membership or partitions.
        assert epoch == self.epoch + (1 if changed else 0), (op, member, changed, epoch, self.epoch)
        if changed:
            self._check_new_assignment(assignment)
            self.assignment, self.assigned_partitions = assignment, self.partitions
        else:
            assert assignment == self.assignment, "assignment moved without a change"
        self.epoch = epoch
        if op != "leave":
            mine = sorted(int(p) for p in reply[4].split(b",")) if reply[4] else []
            assert mine == assignment.get(member, [])
        self._check_no_dead_owner(assignment, now)
        return reply

    def _predict(self, op: str, member: str, instance: str) -> tuple[str, bool, int]:
        # An empty group has no deadline to re-arm: that is not reported as a gap.
        rearmed = 1 if self.gap_pending and self.registry else 0
        if self.gap_pending:  # every deadline re-armed: the "crashed" live again
            self.crashed.clear()
            self.gap_pending = False
        changed = False
        if op == "join":
            changed = member not in self.registry
            self.registry[member] = instance
            self.crashed.discard(member)
        elif op == "leave":
            if self.registry.get(member) == instance:
                del self.registry[member]
                self.crashed.discard(member)
                changed = True
        else:
            if self.registry.get(member) != instance:
                # A newer instance holds the member id (stop for good), or nobody does (rejoin).
                return ("REPLACED" if member in self.registry else "FENCED"), False, rearmed
            self.crashed.discard(member)
        for dead in self.crashed:  # expired by this call
            self.retired[dead] = self.registry.pop(dead)
            changed = True
        self.crashed.clear()
        if self.assigned_partitions != self.partitions:
            changed = True
        return "OK", changed, rearmed

    def _check_new_assignment(self, new: dict[str, list[int]]) -> None:
        if not self.registry:
            assert new == {}
            return
        ids = sorted(self.registry)
        if self.assignor == "round_robin" or self.assignment is None:  # sticky needs a previous one
            expected: dict[str, list[int]] = {m: [] for m in ids}
            for p in range(self.partitions):
                expected[ids[p % len(ids)]].append(p)
            assert new == expected
        elif self.assignment is not None:
            # Sticky: a surviving member keeps what it held, up to its new share.
            for m in set(new) & set(self.assignment):
                held = {p for p in self.assignment[m] if p < self.partitions}
                kept = held & set(new[m])
                assert len(kept) == min(len(held), len(new[m])), (m, self.assignment[m], new[m])

    def _check_no_dead_owner(self, assignment: dict[str, list[int]], now: int) -> None:
        scores = dict(self.run(self.client.zrange(self.deadlines, 0, -1, withscores=True)))
        for m in assignment:
            deadline = scores.get(m.encode())
            assert deadline is not None and deadline >= now, (
                f"{m!r} holds partitions past its deadline"
            )

    def pick(self, data: st.DataObject, pool: Any) -> str:
        return data.draw(st.sampled_from(sorted(pool)))

    # -- rules
    @initialize(partitions=st.integers(1, 12), assignor=st.sampled_from(ASSIGNORS))
    def create_topic(self, partitions: int, assignor: str) -> None:
        self.run(self.client.hset(self.meta, mapping={"partitions": partitions, "version": 1}))
        self.partitions = partitions
        self.assignor = assignor

    @rule(member=member_ids)
    def join(self, member: str) -> None:
        if member in self.registry:
            return  # a join of a known member is the restart rule
        self.call("join", member, uuid.uuid4().hex)

    @precondition(lambda self: self.registry)
    @rule(data=st.data())
    def restart_with_a_new_instance(self, data: st.DataObject) -> None:
        member = self.pick(data, self.registry)
        self.retired[member] = self.registry[member]
        self.call("join", member, uuid.uuid4().hex)  # static membership: no rebalance

    @precondition(lambda self: self.registry)
    @rule(data=st.data())
    def leave(self, data: st.DataObject) -> None:
        member = self.pick(data, self.registry)
        self.call("leave", member, self.registry[member])

    @precondition(lambda self: set(self.registry) - self.crashed)
    @rule(data=st.data())
    def crash(self, data: st.DataObject) -> None:
        member = self.pick(data, set(self.registry) - self.crashed)
        self.run(self.client.zadd(self.deadlines, {member: 1}))  # its deadline passed long ago
        self.crashed.add(member)

    @precondition(lambda self: self.registry)
    @rule(data=st.data())
    def heartbeat(self, data: st.DataObject) -> None:
        member = self.pick(data, self.registry)
        self.call("beat", member, self.registry[member])

    @precondition(lambda self: self.retired)
    @rule(data=st.data())
    def stale_instance_heartbeat(self, data: st.DataObject) -> None:
        member = self.pick(data, self.retired)
        stale = self.retired[member]
        if self.registry.get(member) == stale:
            return  # it is current again (rejoined with that instance): not stale
        expected = b"REPLACED" if member in self.registry else b"FENCED"
        reply = self.call("beat", member, stale)
        assert reply[0] == expected

    @rule(by=st.integers(1, 5))
    def grow_partitions(self, by: int) -> None:
        self.partitions = min(self.partitions + by, 64)
        self.run(self.client.hset(self.meta, "partitions", self.partitions))
        self.run(self.client.hincrby(self.meta, "version", 1))

    @rule(assignor=st.sampled_from(ASSIGNORS))
    def switch_assignor(self, assignor: str) -> None:
        self.assignor = assignor

    @precondition(lambda self: self.assignment is not None)
    @rule()
    def coordinator_gap(self) -> None:
        """Redis was away for a while: the last tick is far in the past."""
        now = self.run(self._now_ms())
        self.run(self.client.hset(self.state, "last_tick", now - 10 * SESSION_MS))
        self.gap_pending = True

    # -- invariants (after every step, calls or not)
    @invariant()
    def assignment_is_complete_disjoint_and_balanced(self) -> None:
        if self.assignment is None:
            return
        epoch, partitions, assignment = self.stored()
        assert epoch == self.epoch and assignment == self.assignment
        assert set(assignment) == set(self.registry)  # exactly the members it holds
        flat = sorted(p for ps in assignment.values() for p in ps)
        assert flat == (list(range(partitions)) if assignment else [])  # complete, no overlap
        if assignment:
            sizes = [len(ps) for ps in assignment.values()]
            assert max(sizes) - min(sizes) <= 1
        # A beat that changes nothing answers from its member's own list ("m:<id>"):
        # every member's list is its share of the assignment, and departed members have none.
        fields = self.run(self.client.hgetall(self.state))
        lists = {k.decode()[2:]: v.decode() for k, v in fields.items() if k.startswith(b"m:")}
        assert lists == {m: ",".join(map(str, ps)) for m, ps in assignment.items()}

    def teardown(self) -> None:
        self.run(self.client.delete(*self.keys))


@pytest.mark.timeout(120)
def test_coordinator_assignment_stays_complete_disjoint_and_sticky(
    redis_url: str, namespace: str
) -> None:
    with asyncio.Runner() as runner:
        client = redis.asyncio.Redis.from_url(redis_url)
        bound = type(
            "Coordinator",
            (CoordinatorMachine,),
            {"runner": runner, "client": client, "namespace": namespace},
        )
        try:
            run_state_machine_as_test(
                bound,
                settings=settings(
                    max_examples=300,
                    stateful_step_count=50,
                    deadline=None,
                    database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
                ),
            )
        finally:
            runner.run(client.aclose())

"""``redcurrent demo``: a consumer group surviving a SIGKILL, checked against what was really sent.

One concern per module:

* :mod:`.command`: the Click command and its options (:class:`.options.DemoOptions`).
* :mod:`.phases`: the run: create the topic, start the fleet, wait until every consumer
  joined, produce (killing a consumer, and on a cluster a Redis primary, on the way),
  drain, stop.
* :mod:`.fleet`: the consumer *processes* and the tails of their logs.
* :mod:`.worker`: one consumer process (``python -m redcurrent.cli.demo.worker``).
* :mod:`.chaos`: ``--cluster``: where the cluster comes from and the primary it SIGKILLs.
* :mod:`.view`: the narration and the live table.
* :mod:`.report`: the verdict (``redcurrent.testing``'s history checker), its JSON and
  its table.

This file imports nothing, so a worker process starts without Click or Rich.
"""

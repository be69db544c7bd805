"""Run a consumer until SIGTERM/SIGINT, then stop it gracefully (Kubernetes-style).

The first signal starts a graceful stop bounded by ``grace_period``: in-flight
messages finish and are acked, partitions are released, the member leaves. If the
grace period runs out, or a second signal arrives, the stop is forced: nothing more
is acked, and unacked messages stay pending for the partition's next owner, so
nothing is lost either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Sequence
from typing import Literal, cast, overload

from .consumer import Consumer, start_if_new
from .errors import ConfigError
from .protocols import BatchHandler, Handler

__all__ = ["run_consumer"]

log = logging.getLogger(__name__)


@overload
async def run_consumer(
    consumer: Consumer,
    handler: Handler,
    *,
    batch: Literal[False] = False,
    grace_period: float = 30.0,
    signals: Sequence[signal.Signals] = (signal.SIGTERM, signal.SIGINT),
    transactional: bool = False,
) -> None: ...


@overload
async def run_consumer(
    consumer: Consumer,
    handler: BatchHandler,
    *,
    batch: Literal[True],
    grace_period: float = 30.0,
    signals: Sequence[signal.Signals] = (signal.SIGTERM, signal.SIGINT),
) -> None: ...


async def run_consumer(
    consumer: Consumer,
    handler: Handler | BatchHandler,
    *,
    batch: bool = False,
    grace_period: float = 30.0,
    signals: Sequence[signal.Signals] = (signal.SIGTERM, signal.SIGINT),
    transactional: bool = False,
) -> None:
    """Process messages with ``handler`` until a signal, then stop within ``grace_period``.

    ``await run_consumer(Consumer("orders", group="billing"), handle, grace_period=20)``
    — ``batch=True`` calls ``process_batch`` instead of ``process``;
    ``transactional=True`` calls ``process(handler, transactional=True)`` (consume →
    produce exactly once: the handler returns its :class:`~redcurrent.Output` records).
    A graceful stop commits the batch in hand; a forced one leaves it to be redone.
    """
    if batch and transactional:
        raise ConfigError("transactional processing is per message: use batch=False")
    loop = asyncio.get_running_loop()
    received: list[int] = []
    stopping: asyncio.Task[None] | None = None
    forced = asyncio.Event()
    aborts: list[asyncio.Task[None]] = []

    async def graceful() -> None:
        try:
            await asyncio.wait_for(asyncio.shield(consumer.stop()), grace_period)
        except TimeoutError:
            log.warning("graceful stop exceeded %.1fs; forcing it", grace_period)
            forced.set()
        if forced.is_set():
            await consumer.abort()

    def on_signal(signum: int) -> None:
        nonlocal stopping
        received.append(signum)
        if stopping is None:
            log.info("signal %s: stopping gracefully (grace period %.1fs)", signal.Signals(signum).name, grace_period)
            stopping = loop.create_task(graceful(), name="redcurrent-graceful-stop")
        else:
            log.warning("second signal %s: forcing the stop", signal.Signals(signum).name)
            forced.set()
            aborts.append(loop.create_task(consumer.abort(), name="redcurrent-forced-stop"))

    for sig in signals:
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        await start_if_new(consumer)
        # The overloads tie batch=True to a BatchHandler and batch=False to a Handler.
        if batch:
            await consumer.process_batch(cast(BatchHandler, handler))
        else:
            if transactional:
                await consumer.process(cast(Handler, handler), transactional=True)
            else:
                await consumer.process(cast(Handler, handler))
        if stopping is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await stopping
        await asyncio.gather(*aborts, return_exceptions=True)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)

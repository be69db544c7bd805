"""Blocking clients for code without an event loop: Flask, Django, scripts, threads.

Example::

    from redcurrent.sync import Consumer, Producer

    with Producer("redis://localhost:6379") as producer:   # share one between threads
        meta = producer.send("orders", {"id": 42}, key="customer-7")

    with Consumer("orders", group="billing", url="redis://localhost:6379") as consumer:
        for msg in consumer:                                # acked when you ask for the next
            print(msg.key, msg.value)

Each object drives the async client of the same name (``redcurrent.Producer`` …) on a
private event loop, in a daemon thread that its first call starts and ``close()`` ends.
One loop per object, not one per process: a serializer or deserializer that blocks
stalls only its own object, and every thread has one owner (docs/sync.md has the
measurements: a shared loop is up to 15% faster only when two objects are busy at once).
A blocking method called from a thread that runs an event loop raises
:class:`~redcurrent.IllegalStateError` instead of blocking that loop. Plain handlers of
``process()`` run in worker threads, one at a time per partition, so the loop keeps
heartbeating while they work. Errors are the async API's typed exceptions. An object
still open at interpreter exit is closed then (a producer flushes first).
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import concurrent.futures
import contextlib
import functools
import inspect
import os
import queue
import sys
import threading
import weakref
from collections.abc import Awaitable, Callable, Iterator
from types import TracebackType
from typing import Any, Concatenate, Generic, ParamSpec, Self, TypeVar

from .admin import Admin as AsyncAdmin
from .config import check_bool
from .consumer import Consumer as AsyncConsumer
from .errors import ConsumerStoppedError, IllegalStateError, ProducerClosedError
from .producer import Producer as AsyncProducer
from .structs import Message, RecordMetadata
from .transaction import Transaction as AsyncTransaction

__all__ = ("Admin", "Consumer", "Producer", "Transaction")

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., object])
M = TypeVar("M")  # what a process() handler takes: a Message, or a list of them
S = TypeVar("S")
A = TypeVar("A", AsyncProducer, AsyncConsumer, AsyncAdmin)
Closer = Callable[[], Awaitable[None]]

_handling = threading.local()  # .loop: the _Loop whose handler or listener this thread runs


class _Workers(concurrent.futures.ThreadPoolExecutor):
    """Up to ``max_workers`` daemon threads, started as work arrives.

    Not ThreadPoolExecutor's own threads: at interpreter exit concurrent.futures refuses
    new work before atexit hooks run, and closing at exit may still call handlers or
    resolve a host name. A subclass only because ``loop.set_default_executor`` insists.
    """

    def __init__(self, max_workers: int, name: str) -> None:  # nothing of super().__init__ is used
        self._limit = max_workers
        self._name = name
        self._work: queue.SimpleQueue[tuple[concurrent.futures.Future[Any], Callable[[], Any]] | None]
        self._work = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)
        self._started: list[threading.Thread] = []
        self._guard = threading.Lock()

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._work.put((future, functools.partial(fn, *args, **kwargs)))
        if not self._idle.acquire(blocking=False):
            with self._guard:
                if len(self._started) < self._limit:
                    name = f"{self._name}-{len(self._started)}"
                    thread = threading.Thread(target=self._serve, name=name, daemon=True)
                    self._started.append(thread)
                    thread.start()
        return future

    def _serve(self) -> None:
        while (item := self._work.get()) is not None:
            future, call = item
            if future.set_running_or_notify_cancel():
                try:
                    result = call()
                except BaseException as exc:
                    future.set_exception(exc)
                else:
                    future.set_result(result)
            del item, future, call  # never keep a finished handler's message alive
            self._idle.release()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._guard:
            threads, self._started = self._started, []
        for _ in threads:
            self._work.put(None)
        if wait:
            for thread in threads:
                if thread is not threading.current_thread():
                    thread.join()


class _Call(Generic[R]):
    """One blocking call into the loop. Lighter than a concurrent Future (a lock, no
    condition or callbacks): one is made per ``send`` on the hot path."""

    __slots__ = ("_done", "dropped", "error", "result", "task")

    result: R  # set by finish() unless it failed

    def __init__(self) -> None:
        self._done = threading.Lock()
        self._done.acquire()
        self.error: BaseException | None = None
        self.task: asyncio.Future[R] | None = None
        self.dropped = False

    def bind(self, task: asyncio.Future[R]) -> None:
        self.task = task

    def finish(self, task: asyncio.Future[R]) -> None:
        if task.cancelled():
            self.fail(concurrent.futures.CancelledError())
        else:
            self.error = task.exception()
            if self.error is None:
                self.result = task.result()
            self._done.release()

    def fail(self, exc: BaseException) -> None:
        self.error = exc
        self._done.release()

    def wait(self) -> R:
        self._done.acquire()
        if self.error is not None:
            raise self.error
        return self.result

    def abandon(self) -> None:
        """On the loop: the caller stopped waiting (Ctrl-C); end the call there too."""
        self.dropped = True
        if self.task is not None:
            self.task.cancel()


class _Promise(concurrent.futures.Future[R]):
    """A call whose caller does not wait: ``send_async``'s future."""

    def bind(self, task: asyncio.Future[R]) -> None:
        def cancel_in(f: concurrent.futures.Future[R]) -> None:
            if f.cancelled():
                with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to cancel
                    task.get_loop().call_soon_threadsafe(task.cancel)

        self.add_done_callback(cancel_in)

    @property
    def dropped(self) -> bool:
        return self.cancelled()

    def finish(self, task: asyncio.Future[R]) -> None:
        if task.cancelled():
            self.cancel()
        elif (exc := task.exception()) is not None:
            self.fail(exc)
        elif self.set_running_or_notify_cancel():
            self.set_result(task.result())

    def fail(self, exc: BaseException) -> None:
        if self.set_running_or_notify_cancel():
            self.set_exception(exc)


class _Loop:
    """One object's event loop, on a daemon thread its first call starts.

    Calls arrive from any thread through an inbox and run as tasks on the loop.
    ``close`` runs the object's closer and ends the thread. A call racing with
    ``close`` gets the closed error, never a silent hang: it is queued before it
    checks the closed flag, and the flag is set before the last inbox is emptied.
    """

    def __init__(self, kind: str, closed_error: Callable[[], Exception], reopen: bool = False) -> None:
        self.kind = kind
        self._closed_error = closed_error
        self._reopen = reopen  # Admin: usable again after close(), as the async one is
        self._guard = threading.Lock()
        self._closing = threading.Lock()
        self._closer_thread: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pid = 0
        # Calls of any result type: each pair agrees with itself (see _queue).
        self._inbox: collections.deque[tuple[_Call[Any] | _Promise[Any], Callable[[], Awaitable[Any]]]]
        self._inbox = collections.deque()
        self._waking = False
        self.closed = False
        self.exit_closer: Closer | None = None

    # -- calling in --
    def run(self, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run ``fn(*args, **kwargs)`` on the loop and wait for its result or error."""
        if asyncio._get_running_loop() is not None:
            refuse_in_loop(getattr(fn, "__qualname__", "this call"))
        call: _Call[R] = _Call()
        loop = self._queue(call, functools.partial(fn, *args, **kwargs))
        try:
            return call.wait()
        except concurrent.futures.CancelledError:
            if self.closed:
                raise self._closed_error() from None
            raise
        except BaseException:
            if call.error is None:  # interrupted while waiting (Ctrl-C): end it on the loop too
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(call.abandon)
            raise

    def submit(
        self, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs
    ) -> concurrent.futures.Future[R]:
        """Start ``fn(*args, **kwargs)`` on the loop; its result arrives in the future."""
        promise: _Promise[R] = _Promise()
        self._queue(promise, functools.partial(fn, *args, **kwargs))
        return promise

    def _queue(self, call: _Call[R] | _Promise[R], fn: Callable[[], Awaitable[R]]) -> asyncio.AbstractEventLoop:
        loop = self._running()
        self._inbox.append((call, fn))
        if self.closed:
            raise self._closed_error()
        # One wake-up per loop round, not per call: each is a write to the loop's
        # self-pipe, and every syscall hands the GIL to another sending thread. The
        # call is queued before the flag is tested, and the loop clears the flag
        # before it empties the inbox: no call is left there unseen.
        if not self._waking:
            self._waking = True
            try:
                loop.call_soon_threadsafe(self._drain)
            except RuntimeError:  # the loop closed under us
                raise self._closed_error() from None
        return loop

    def _drain(self) -> None:
        self._waking = False
        inbox = self._inbox
        while inbox:
            call, fn = inbox.popleft()
            if call.dropped:
                continue
            try:
                task = asyncio.ensure_future(fn())
            except BaseException as exc:
                call.fail(exc)
                continue
            call.bind(task)
            task.add_done_callback(call.finish)

    def read(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call a plain method of the async object where its state lives (the loop)."""
        loop = self._loop
        if loop is None or self.closed or threading.current_thread() is self._thread:
            return fn(*args, **kwargs)  # nothing else touches the object now

        async def call() -> R:
            return fn(*args, **kwargs)

        return self.submit(call).result()

    def _running(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is not None and self._pid == os.getpid():
            return loop
        with self._guard:
            if self._loop is not None and self._pid != os.getpid():
                raise IllegalStateError(
                    f"this {self.kind} was used before os.fork(); its event-loop thread and "
                    f"connections stayed in the parent. Create the {self.kind} in each process "
                    "(one made before the fork and first used after it works)"
                )
            if self.closed:
                raise self._closed_error()
            if self._loop is None:
                self._start()
            assert self._loop is not None
            return self._loop

    def _start(self) -> None:
        loop = asyncio.new_event_loop()
        loop.set_default_executor(_Workers(4, f"redcurrent-{self.kind.lower()}-dns"))
        self._thread = threading.Thread(
            target=self._main, args=(loop,), name=f"redcurrent-{self.kind.lower()}-loop", daemon=True
        )
        self._inbox.clear()
        self._waking = False
        self._loop, self._pid = loop, os.getpid()
        self._thread.start()
        _open_loops[self] = None
        # Last registered runs first: before the stop of a server started earlier
        # (redcurrent.embedded registers its own at start).
        atexit.unregister(_close_all_at_exit)
        atexit.register(_close_all_at_exit)

    def _main(self, loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
            loop.run_until_complete(_finish_tasks(loop))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            executor = getattr(loop, "_default_executor", None)
            if isinstance(executor, _Workers):
                executor.shutdown(wait=False)
            loop.close()
            while self._inbox:  # queued after the last round: closed is set by now
                call, _ = self._inbox.popleft()
                call.fail(self._closed_error())

    # -- closing --
    def close(self, closer: Closer, *, wait: bool = True) -> None:
        """Run ``closer`` on the loop, then end the thread. Idempotent.

        From the loop thread, or from a handler this loop is running (a stop from inside
        a handler), it cannot wait: the close is started and finishes on its own."""
        if threading.current_thread() is self._thread or getattr(_handling, "loop", None) is self:
            wait = False
        if not wait:
            if self._loop is not None and not self.closed:
                self.submit(self._close_in_loop, closer)
            return
        if self._closer_thread == threading.get_ident():
            return  # a signal handler, inside this thread's own close(): that one finishes it
        with self._closing:  # one closer; a concurrent close() returns once it is done
            if self._loop is None or self.closed:
                self.closed = not self._reopen  # never started: nothing to finish
                return
            self._closer_thread = threading.get_ident()
            try:
                self.run(closer)
            finally:
                self._closer_thread = None
                self._stop()

    @property
    def started(self) -> bool:
        return self._loop is not None and not self.closed

    @property
    def closing(self) -> bool:
        return self._closing.locked()

    async def _close_in_loop(self, closer: Closer) -> None:
        try:
            await closer()
        finally:
            self.closed = True
            loop = asyncio.get_running_loop()
            loop.call_soon(loop.stop)
            _open_loops.pop(self, None)

    def _stop(self) -> None:
        with self._guard:
            loop, thread = self._loop, self._thread
            if loop is None or thread is None:
                return
            self.closed = True
            with contextlib.suppress(RuntimeError):  # closed already, by a close from the loop
                loop.call_soon_threadsafe(loop.stop)
            if thread is not threading.current_thread():
                thread.join()
            _open_loops.pop(self, None)
            if self._reopen:
                self._loop = self._thread = None
                self.closed = False

    def at_exit(self) -> None:
        if self.exit_closer is not None and not self.closed and self._pid == os.getpid():
            self.close(self.exit_closer)


async def _finish_tasks(loop: asyncio.AbstractEventLoop) -> None:
    """What is left when the loop stops: calls still waiting (an iterator woken by the
    stop finishes by itself); then cancel the rest, briefly (a handler thread that never
    returns must not hold close() forever)."""
    tasks = {t for t in asyncio.all_tasks(loop) if t is not asyncio.current_task()}
    if tasks:
        _, tasks = await asyncio.wait(tasks, timeout=0.5)
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=1.0)


# Loops open right now, in the order they started; closed at interpreter exit.
_open_loops: dict[_Loop, None] = {}
_EXIT_ORDER = {"Consumer": 0, "Producer": 1, "Admin": 2}


def _close_all_at_exit() -> None:
    """Consumers first (their handlers may still produce), then producers (flush), then
    admins; the newest of each kind first."""
    for loop in sorted(reversed(list(_open_loops)), key=lambda lp: _EXIT_ORDER.get(lp.kind, 3)):
        try:
            loop.at_exit()
        except Exception as exc:  # the others still get closed
            print(f"redcurrent: closing a {loop.kind} at exit failed: {exc!r}", file=sys.stderr)


def refuse_in_loop(what: str) -> None:
    """Raise IllegalStateError if this thread runs an event loop: blocking it would stall
    that loop, and deadlock it if it is the loop the call needs."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise IllegalStateError(
        f"{what}() blocks, and this thread runs an event loop: use the async client "
        "(redcurrent.Producer, Consumer, Admin) here, or move the call to a thread "
        "(await asyncio.to_thread(...))"
    )


def _sync_doc(doc: str | None) -> str | None:
    if doc is None:
        return None
    return doc.replace("async with ", "with ").replace("async for ", "for ").replace("await ", "")


class _Client(Generic[A]):
    """What the three clients share: the loop, the context manager, close at exit."""

    _aio: A
    _loop: _Loop

    def _bind(self, aio: A, loop: _Loop, closer: Closer | None = None) -> None:
        self._aio, self._loop = aio, loop
        self._closer = closer or aio.close
        loop.exit_closer = self._closer
        # Dropped without close(): closed on its loop, without blocking whoever dropped it.
        # (At interpreter exit _close_all_at_exit closes it, in order, and waits.)
        weakref.finalize(self, loop.close, self._closer, wait=False).atexit = False

    def __repr__(self) -> str:
        return repr(self._aio).replace("<", "<sync ", 1)

    def start(self) -> None:
        """Connect now (the first call does it otherwise)."""
        self._loop.run(self._aio.start)

    def close(self) -> None:
        """Finish work (as the async ``close()``), then end the event-loop thread. Idempotent."""
        self._loop.close(self._closer)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._loop.close(self._closer)


def _same_params(
    source: Callable[Concatenate[S, P], None],
) -> Callable[[Callable[Concatenate[T, ...], None]], Callable[Concatenate[T, P], None]]:
    """Give a ``__init__(self, *args, **kwargs)`` the parameters (names, defaults, types)
    of ``source``: one definition, so the two never drift apart."""

    def adopt(init: Callable[Concatenate[T, ...], None]) -> Callable[Concatenate[T, P], None]:
        init.__signature__ = inspect.signature(source)  # type: ignore[attr-defined]
        return init

    return adopt


def _blocking(method: Callable[Concatenate[A, P], Awaitable[R]]) -> Callable[Concatenate[_Client[A], P], R]:
    """The blocking twin of an async method: same name, parameters, result and errors."""

    def call(self: _Client[A], /, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._loop.run(method, self._aio, *args, **kwargs)

    return _mirror(call, method)


def _on_loop(method: Callable[Concatenate[A, P], R]) -> Callable[Concatenate[_Client[A], P], R]:
    """A plain method of the async object, called on its loop (where its state changes)."""

    def call(self: _Client[A], /, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._loop.read(method, self._aio, *args, **kwargs)

    return _mirror(call, method)


def _submitting(
    method: Callable[Concatenate[AsyncProducer, P], Awaitable[RecordMetadata]],
) -> Callable[Concatenate[Producer, P], concurrent.futures.Future[RecordMetadata]]:
    """The non-blocking twin of an async send: same parameters, a concurrent Future."""

    def send_async(self: Producer, /, *args: P.args, **kwargs: P.kwargs) -> concurrent.futures.Future[RecordMetadata]:
        """Queue one message without waiting (parameters as :meth:`send`); the future
        gets its RecordMetadata or error.

        Never blocks, so it may be called from anywhere, an event loop's thread included
        (``await asyncio.wrap_future(future)`` there). Cancelling the future does not
        withdraw a queued record; :meth:`flush` and :meth:`close` wait for it."""
        future = self._loop.submit(method, self._aio, *args, **kwargs)
        self._unsent.add(future)
        future.add_done_callback(self._unsent.discard)
        return future

    returns = f"concurrent.futures.Future[{inspect.signature(method).return_annotation}]"
    send_async.__signature__ = inspect.signature(method).replace(return_annotation=returns)  # type: ignore[attr-defined]
    return send_async


def _mirror(call: F, method: Callable[..., object]) -> F:
    call.__name__, call.__qualname__ = method.__name__, method.__qualname__
    call.__doc__ = _sync_doc(method.__doc__) or f"As :meth:`redcurrent.{method.__qualname__}`, blocking."
    call.__wrapped__ = method  # type: ignore[attr-defined]  # inspect.signature follows it
    return call


# ------------------------------------------------------------------------------ Producer


class Producer(_Client[AsyncProducer]):
    """The blocking :class:`redcurrent.Producer`; one instance serves every thread.

    Example::

        producer = Producer("redis://localhost:6379")      # e.g. at module level in Flask
        meta = producer.send("orders", {"id": 42}, key="customer-7")
        future = producer.send_async("orders", {"id": 43})  # concurrent.futures.Future
        producer.close()                                    # flushes; also done at exit

    Parameters, defaults, guarantees and errors are those of :class:`redcurrent.Producer`.
    Sends from many threads coalesce into few script calls, as concurrent tasks do.
    """

    @_same_params(AsyncProducer.__init__)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        aio = AsyncProducer(*args, **kwargs)
        # send_async calls not finished yet: flush() and close() wait for them first, as
        # a call may still be looking its topic up, where the async flush cannot see it.
        self._unsent: set[concurrent.futures.Future[RecordMetadata]] = set()
        closed = _Loop("Producer", lambda: ProducerClosedError("the producer is closed"))
        self._bind(aio, closed, _after(self._unsent, aio.close))

    send = _blocking(AsyncProducer.send)
    send_async = _submitting(AsyncProducer.send)

    def flush(self) -> None:
        """Wait until every message sent so far (``send_async`` included) is stored or failed."""
        self._loop.run(_after(self._unsent, self._aio.flush))

    send_batch = _blocking(AsyncProducer.send_batch)
    partitions_for = _blocking(AsyncProducer.partitions_for)
    stats = _on_loop(AsyncProducer.stats)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """The blocking :meth:`redcurrent.Producer.transaction`: ``with producer.transaction()
        as tx:``, then ``tx.send(...)`` / ``tx.send_batch(...)``, which return
        ``concurrent.futures.Future`` objects resolved at commit. Leaving the block commits
        (one script call, all or nothing); an exception inside it aborts (nothing written,
        futures cancelled) and propagates."""
        tx = Transaction(self._loop, AsyncTransaction(self._aio))
        try:
            yield tx
        except BaseException:
            self._loop.run(_aborted, tx._aio)
            raise
        self._loop.run(tx._aio._commit)

    @property
    def producer_id(self) -> str:
        """This producer's idempotence id ("" when idempotence is off or before start)."""
        return self._aio.producer_id


class Transaction:
    """The blocking :class:`redcurrent.Transaction` (made by :meth:`Producer.transaction`)."""

    def __init__(self, loop: _Loop, aio: AsyncTransaction) -> None:
        self._loop, self._aio = loop, aio

    def send(self, topic: str, value: Any, **kwargs: Any) -> concurrent.futures.Future[RecordMetadata]:
        """Add one record (parameters as :meth:`redcurrent.Transaction.send`); its future
        resolves at commit."""
        [future] = self._loop.run(_collect, self._aio.send(topic, value, **kwargs))
        return future

    def send_batch(self, topic: str, records: Any) -> list[concurrent.futures.Future[RecordMetadata]]:
        """Add many records (as :meth:`redcurrent.Transaction.send_batch`); one future each."""
        return self._loop.run(_collect, self._aio.send_batch(topic, records))


async def _collect(
    added: Awaitable[asyncio.Future[RecordMetadata] | list[asyncio.Future[RecordMetadata]]],
) -> list[concurrent.futures.Future[RecordMetadata]]:
    """On the loop: a transaction's futures as thread-safe ones."""
    got = await added
    out = []
    for fut in got if isinstance(got, list) else [got]:
        twin: concurrent.futures.Future[RecordMetadata] = concurrent.futures.Future()

        def copy(f: asyncio.Future[RecordMetadata], twin: concurrent.futures.Future[RecordMetadata] = twin) -> None:
            if f.cancelled():
                twin.cancel()
            elif f.exception() is not None:
                twin.set_exception(f.exception())
            else:
                twin.set_result(f.result())

        fut.add_done_callback(copy)
        out.append(twin)
    return out


async def _aborted(tx: AsyncTransaction) -> None:
    tx._abort()


def _after(unsent: set[concurrent.futures.Future[RecordMetadata]], then: Closer) -> Closer:
    """``then`` once every call in ``unsent`` (at the time it runs) has finished."""

    async def settled() -> None:
        if unsent:
            await asyncio.wait([asyncio.wrap_future(f) for f in list(unsent)])
        await then()

    return settled


# ------------------------------------------------------------------------------ Consumer


class Consumer(_Client[AsyncConsumer]):
    """The blocking :class:`redcurrent.Consumer`: iterate it, or hand it a plain function.

    Example::

        with Consumer("orders", group="billing", url="redis://localhost:6379") as consumer:
            for msg in consumer:          # acked when you ask for the next one
                print(msg.key, msg.value)

        consumer = Consumer("orders", group="billing")
        consumer.process(handle)          # handle(msg) in a worker thread; until stop()

    Parameters are those of :class:`redcurrent.Consumer`; ``on_assign``, ``on_revoke``
    and ``on_lost`` may be plain functions (they run in a thread of their own). The ack
    rules are the async ones: in ``for``, a message counts as handled when you ask for
    the next one, ack it, or leave the loop cleanly (``break``); if the ``with`` body
    raises, the message in hand is not acked and the group's next member gets it.
    """

    @_same_params(AsyncConsumer.__init__)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        loop = _Loop("Consumer", lambda: ConsumerStoppedError("the consumer was stopped"))
        listeners = _Workers(1, "redcurrent-listener")
        for name in ("on_assign", "on_revoke", "on_lost"):
            fn = kwargs.get(name)
            if callable(fn) and not inspect.iscoroutinefunction(fn):
                kwargs[name] = functools.partial(_in_thread, fn, listeners, loop)
        self._bind(AsyncConsumer(*args, **kwargs), loop)
        loop.exit_closer = _exit_closer(self._aio)

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        """The body raised: the message in hand is not acked (the async ``__aexit__``)."""
        aio = self._aio

        async def leave() -> None:
            await aio.__aexit__(et, e, tb)

        self._loop.close(leave)

    @property
    def topics(self) -> tuple[str, ...]:
        return self._aio.topics

    @property
    def group(self) -> str:
        return self._aio.group

    @property
    def member_id(self) -> str:
        return self._aio.member_id

    @property
    def instance_id(self) -> str:
        return self._aio.instance_id

    def __iter__(self) -> Iterator[Message]:
        return self

    def __next__(self) -> Message:
        """The next message; the previous one counts as handled (acked with auto_ack)."""
        if self._loop.closed:
            raise StopIteration
        try:
            return self._loop.run(self._aio.__anext__)
        except StopAsyncIteration:
            raise StopIteration from None
        except ConsumerStoppedError:
            if self._loop.closed:  # stopped while this call waited
                raise StopIteration from None
            raise

    getone = _blocking(AsyncConsumer.getone)
    ack = _blocking(AsyncConsumer.ack)
    ack_many = _blocking(AsyncConsumer.ack_many)
    seek = _blocking(AsyncConsumer.seek)
    seek_to_beginning = _blocking(AsyncConsumer.seek_to_beginning)
    seek_to_end = _blocking(AsyncConsumer.seek_to_end)
    assignment = _on_loop(AsyncConsumer.assignment)
    epoch = _on_loop(AsyncConsumer.epoch)
    pause = _on_loop(AsyncConsumer.pause)
    resume = _on_loop(AsyncConsumer.resume)
    paused = _on_loop(AsyncConsumer.paused)
    stats = _on_loop(AsyncConsumer.stats)
    handler_latency = _on_loop(AsyncConsumer.handler_latency)

    def process(self, handler: Callable[[Message], object], *, threads: int | None = None,
                transactional: bool = False) -> None:
        """Call ``handler(msg)`` for every message, in a worker thread; ack after it returns.

        Blocks until :meth:`stop` (from another thread, a signal handler, or the handler
        itself). One handler call at a time per partition, in order; partitions run
        concurrently on up to ``threads`` threads (default ``min(32, cpus + 4)``, as
        concurrent.futures). Failures retry in place, then go to the dead letters, as
        with the async ``process()``. A thread cannot be interrupted: past
        ``handler_timeout`` the attempt counts as failed once the handler returns, and
        the retry waits for it, so one partition never runs two handlers at once.

        ``transactional=True``: the handler returns its :class:`~redcurrent.Output`
        records, written with the ack of their input exactly once (as the async
        ``process(handler, transactional=True)``).
        """
        check_bool(transactional, "transactional")
        method = functools.partial(AsyncConsumer.process, transactional=True) if transactional else AsyncConsumer.process
        self._process(method, handler, "a Message", threads)

    def process_batch(self, handler: Callable[[list[Message]], object], *, threads: int | None = None) -> None:
        """Call ``handler(msgs)`` with batches of one partition, in order, in a worker
        thread; ack them together (``BatchError(failed)`` retries only those). Otherwise
        as :meth:`process`."""
        self._process(AsyncConsumer.process_batch, handler, "a list of Message", threads)

    def _process(self, method: Callable[[AsyncConsumer, Callable[[M], Awaitable[object]]], Awaitable[None]],
                 handler: Callable[[M], object], takes: str, threads: int | None) -> None:
        if not callable(handler) or inspect.iscoroutinefunction(handler):
            raise TypeError(f"handler must be a plain function taking {takes} (for async "
                            "handlers use redcurrent.Consumer)")
        if self._loop.closed:
            raise ConsumerStoppedError("the consumer was stopped; create a new one")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise TypeError(f"threads must be an int >= 1, got {threads!r}")
        workers = _Workers(threads or min(32, (os.cpu_count() or 1) + 4), "redcurrent-handler")
        try:
            self._loop.run(method, self._aio, functools.partial(_in_thread, handler, workers, self._loop))
        except ConsumerStoppedError:
            if not self._loop.closed:  # stopped while it ran: the async call returns then too
                raise
        finally:
            workers.shutdown(wait=False)

    def stop(self) -> None:
        """Graceful stop: finish in-flight, ack, release partitions, leave the group; then
        end the event-loop thread. Idempotent. From inside a handler it returns at once,
        and the stop completes once the handler has returned (as the async one)."""
        self._loop.close(self._aio.stop)

    close = stop

    def abort(self) -> None:
        """Forced stop: nothing more is acked; unacked messages stay pending for the next owner.

        Safe to call while a graceful :meth:`stop` runs in another thread or below a
        signal handler: it cuts that stop short, as the async one does."""
        if self._loop.started:
            with contextlib.suppress(ConsumerStoppedError):
                self._loop.run(self._aio.abort)
        if not self._loop.closing:  # else the stop in progress ends the thread
            self._loop.close(self._aio.abort)


async def _in_thread(fn: Callable[[T], R], workers: _Workers, loop: _Loop | None, arg: T) -> R:
    """Run a sync handler or listener in a worker thread, off the event loop.

    A thread cannot be cancelled: if this call is (handler_timeout, a stop, a revoke),
    it still waits for the thread before passing the cancellation on, so a partition's
    next handler call never overlaps this one. A stop gives up on it after the
    rebalance timeout, as it does with a handler that ignores cancellation."""
    done = workers.submit(_run_as_handler, fn, loop, arg)
    try:
        return await asyncio.wrap_future(done)
    except asyncio.CancelledError:
        if not done.done():  # still running (not started would have been cancelled)
            waiting = asyncio.wrap_future(done)
            while not waiting.done():
                try:
                    await asyncio.wait({waiting})
                except asyncio.CancelledError:
                    continue
        raise


def _run_as_handler(fn: Callable[[T], R], loop: _Loop | None, arg: T) -> R:
    _handling.loop = loop
    try:
        return fn(arg)
    finally:
        _handling.loop = None


def _exit_closer(aio: AsyncConsumer) -> Closer:
    """At interpreter exit: a program ended by an uncaught exception (Ctrl-C included)
    leaves the message in hand unacked, as the ``with`` body raising would."""

    async def close() -> None:
        exc = getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)
        if isinstance(exc, BaseException):
            await aio.__aexit__(type(exc), exc, exc.__traceback__)
        else:
            await aio.close()

    return close


# ------------------------------------------------------------------------------ Admin


def _admin_closed() -> IllegalStateError:
    return IllegalStateError("the Admin was closed during this call; call again to reconnect")


class Admin(_Client[AsyncAdmin]):
    """The blocking :class:`redcurrent.Admin`: every method, same parameters and errors.

    Example::

        with Admin("redis://localhost:6379") as admin:
            admin.create_topic("orders", partitions=8, exist_ok=True)
            print(admin.describe_topic("orders").partitions)
    """

    @_same_params(AsyncAdmin.__init__)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # The async Admin may be used again after close(), and so may this one.
        self._bind(AsyncAdmin(*args, **kwargs), _Loop("Admin", _admin_closed, reopen=True))

    create_topic = _blocking(AsyncAdmin.create_topic)
    alter_topic_config = _blocking(AsyncAdmin.alter_topic_config)
    describe_topic = _blocking(AsyncAdmin.describe_topic)
    read_partition = _blocking(AsyncAdmin.read_partition)
    list_topics = _blocking(AsyncAdmin.list_topics)
    alter_partitions = _blocking(AsyncAdmin.alter_partitions)
    delete_topic = _blocking(AsyncAdmin.delete_topic)
    list_groups = _blocking(AsyncAdmin.list_groups)
    describe_group = _blocking(AsyncAdmin.describe_group)
    describe_share_group = _blocking(AsyncAdmin.describe_share_group)
    delete_group = _blocking(AsyncAdmin.delete_group)
    lag = _blocking(AsyncAdmin.lag)
    reset_offsets = _blocking(AsyncAdmin.reset_offsets)
    trim = _blocking(AsyncAdmin.trim)
    dead_letters = _blocking(AsyncAdmin.dead_letters)
    dead_letter = _blocking(AsyncAdmin.dead_letter)
    count_dead_letters = _blocking(AsyncAdmin.count_dead_letters)
    requeue_dead_letters = _blocking(AsyncAdmin.requeue_dead_letters)
    delete_dead_letters = _blocking(AsyncAdmin.delete_dead_letters)
    purge_dead_letters = _blocking(AsyncAdmin.purge_dead_letters)


# Public methods of the async clients that the classes above do not declare, by class.
_UNDECLARED: dict[str, list[str]] = {}


def _complete(sync_cls: type, async_cls: type) -> None:
    """Mirror every public method of ``async_cls`` not declared above: one added to the
    async client works here at once; the test suite asks for it to be declared above
    too, for its types."""
    for name, member in vars(async_cls).items():
        if not name.startswith("_") and callable(member) and not hasattr(sync_cls, name):
            setattr(sync_cls, name, (_blocking if inspect.iscoroutinefunction(member) else _on_loop)(member))
            _UNDECLARED.setdefault(sync_cls.__name__, []).append(name)


for _sync, _async in ((Producer, AsyncProducer), (Consumer, AsyncConsumer), (Admin, AsyncAdmin)):
    _complete(_sync, _async)

"""The demo's consumer processes (:mod:`.worker`) and the tails of their event logs."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redcurrent
from redcurrent.testing import HANDLED, Event, parse_log_line

from .options import GROUP, STOP_TIMEOUT_S

__all__ = ["Fleet", "LogTail", "Worker"]


class LogTail:
    """Reads the events a worker appended since the last call (a partial last line waits)."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.rest = path, 0, b""

    def read(self) -> list[Event]:
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        *lines, self.rest = (self.rest + data).split(b"\n")
        return [e for line in lines if line for e in parse_log_line(line) if e.event == HANDLED]


class Worker:
    """One consumer process: its member id, the process, its log and its stderr file."""

    def __init__(self, member: str, proc: subprocess.Popen[bytes], log: Path, err: Path) -> None:
        self.member, self.proc, self.tail, self.err = member, proc, LogTail(log), err
        self.killed = False

    def alive(self) -> bool:
        return self.proc.poll() is None

    def last_error(self) -> str:
        with contextlib.suppress(OSError):
            lines = self.err.read_text(errors="replace").strip().splitlines()
            if lines:
                return lines[-1]
        return f"exit status {self.proc.returncode}"


class Fleet:
    """The consumer processes of group ``demo`` on one topic, logging into ``log_dir``."""

    def __init__(self, workers: list[Worker]) -> None:
        self.workers = workers

    @classmethod
    def spawn(cls, url: str, namespace: str, topic: str, count: int, log_dir: Path) -> Fleet:
        pkg_root = str(Path(redcurrent.__file__).resolve().parent.parent)
        child_env = {
            **os.environ,
            "REDCURRENT_DEMO_URL": url,  # not in argv: ps shows argv
            "PYTHONPATH": os.pathsep.join(filter(None, [pkg_root, os.environ.get("PYTHONPATH")])),
        }
        workers = []
        for i in range(count):
            member = f"consumer-{i + 1}"
            log, err = log_dir / f"{member}.log", log_dir / f"{member}.err"
            argv = [sys.executable, "-m", "redcurrent.cli.demo.worker"]
            with err.open("wb") as err_file:
                proc = subprocess.Popen(
                    [*argv, namespace, topic, GROUP, member, str(log)],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=err_file,
                    env=child_env,
                )
            workers.append(Worker(member, proc, log, err))
        return cls(workers)

    def alive(self) -> list[Worker]:
        return [w for w in self.workers if w.alive()]

    def read(self) -> list[Event]:
        """The messages every worker handled since the last call."""
        return [e for w in self.workers for e in w.tail.read()]

    def pids(self) -> dict[str, int]:
        return {w.member: w.proc.pid for w in self.workers}

    async def stop(self) -> None:
        """SIGTERM (finish, ack, leave the group), then SIGKILL what still runs after a while."""
        for w in self.alive():
            w.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while self.alive() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for w in self.workers:
            if w.alive():
                w.proc.kill()
            w.proc.wait()

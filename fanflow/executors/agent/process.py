"""Running an agent process: its own process group, a bounded capture, a timeout that kills everything.

The process starts in a new session (``start_new_session=True``), so it and every descendant that
does not leave the group on purpose share one process group. On timeout the whole group gets
SIGTERM, then SIGKILL after ``kill_grace_s``; descendants still running after the agent itself
exited are stopped the same way, so nothing an agent started outlives its run.

stdout and stderr are read concurrently (one ``selectors`` loop) so a chatty process never blocks
on a full pipe; only their last ``tail_bytes`` are kept, and each complete stdout line can be
handed to a callback (how the agent's JSON output is parsed without keeping all of it).
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO

__all__ = ["BASE_ENV", "LINE_LIMIT", "TAIL_BYTES", "ProcessResult", "agent_environment", "run_process"]

#: The worker's variables every agent gets (when set); anything else only when named in ``env``.
BASE_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TERM", "TMPDIR", "USER", "SHELL")
#: How much of stdout and of stderr is kept (the end of each).
TAIL_BYTES = 64 * 1024
#: A stdout line longer than this is not handed to the line callback (it is still in the tail).
LINE_LIMIT = 16 * 1024 * 1024

_POLL_S = 0.05
#: After the process group is gone, how long pipes held open by an escaped descendant are drained.
_DRAIN_S = 1.0
#: After SIGKILL, how long to wait for the group to disappear (zombies nobody reaps never do).
_AFTER_KILL_S = 2.0


def agent_environment(names: Iterable[str], source: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment an agent gets: ``BASE_ENV`` plus ``names``, taken from ``source`` when set there.

    Args:
        names: the variables the spec passes (its ``env``).
        source: where values come from (default: this process's environment).
    """
    values = os.environ if source is None else source
    return {name: values[name] for name in dict.fromkeys([*BASE_ENV, *names]) if name in values}


@dataclass(frozen=True, slots=True)
class ProcessResult:
    """How an agent process ended.

    Attributes:
        exit_code: its exit status; negative when a signal ended it (``-15``: SIGTERM).
        stdout: the end of its stdout (at most ``tail_bytes``, decoded as UTF-8).
        stderr: the end of its stderr.
        stdout_bytes: how much it wrote to stdout in all.
        stderr_bytes: how much it wrote to stderr in all.
        timed_out: it ran past its timeout and its process group was stopped.
        cancelled: its job was cancelled and its process group was stopped.
        duration_s: wall time from start to exit.
    """

    exit_code: int
    stdout: str
    stderr: str
    stdout_bytes: int
    stderr_bytes: int
    timed_out: bool
    duration_s: float
    cancelled: bool = False


class _Capture:
    """The tail of one stream, plus complete lines for a callback."""

    def __init__(self, limit: int, on_line: Callable[[bytes], None] | None) -> None:
        self.limit = limit
        self.on_line = on_line
        self.tail = bytearray()
        self.total = 0
        self._line = bytearray()
        self._line_too_long = False

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        self.tail += chunk
        if len(self.tail) > self.limit:
            del self.tail[: len(self.tail) - self.limit]
        if self.on_line is None:
            return
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            self._add(chunk[start:end])
            self._emit()
            start = end + 1
        self._add(chunk[start:])

    def _add(self, part: bytes) -> None:
        if self._line_too_long or len(self._line) + len(part) > LINE_LIMIT:
            self._line_too_long = True
            self._line.clear()
        else:
            self._line += part

    def _emit(self) -> None:
        if not self._line_too_long and self.on_line is not None:
            self.on_line(bytes(self._line))
        self._line.clear()
        self._line_too_long = False

    def close(self) -> None:
        if self._line or self._line_too_long:
            self._emit()

    def text(self) -> str:
        return self.tail.decode("utf-8", "replace")


def _group_members(pgid: int) -> bool:
    """True while a live (not zombie) process is in group ``pgid``."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    wanted = str(pgid).encode()
    for name in os.listdir(proc):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 2 and fields[2] == wanted and fields[0] not in (b"Z", b"X"):
            return True
    return False


def _signal_group(pgid: int, signum: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


#: How often a running agent asks whether its job was cancelled.
_STOP_CHECK_S = 1.0


class _Supervisor:
    """The select loop: read both pipes, enforce the timeout, stop the group, know when it is over."""

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        timeout_s: float | None,
        kill_grace_s: float,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        self.process = process
        self.should_stop = should_stop
        self.cancelled = False
        self.checked_at = 0.0
        self.pgid = process.pid  # a session leader's group id is its pid
        self.started = time.monotonic()
        self.deadline = self.started + timeout_s if timeout_s is not None else None
        self.grace = kill_grace_s
        self.timed_out = False
        self.term_at: float | None = None
        self.kill_at: float | None = None
        self.gone_at: float | None = None
        self.ended_at: float | None = None

    def _stop_asked(self, now: float) -> bool:
        """Whether the run's job was cancelled (asked at most once per ``_STOP_CHECK_S``)."""
        if self.should_stop is None or now - self.checked_at < _STOP_CHECK_S:
            return False
        self.checked_at = now
        try:
            return self.should_stop()
        except Exception:  # noqa: BLE001 - a failed check (Redis blip) is not a cancel
            return False

    def step(self, now: float) -> bool:
        """Signal as needed; True when the process and its group are done."""
        exited = self.process.poll() is not None
        if exited and self.ended_at is None:
            self.ended_at = now
        if self.term_at is None:
            if not exited and self.deadline is not None and now >= self.deadline:
                self.timed_out, self.term_at = True, now
                _signal_group(self.pgid, signal.SIGTERM)
            elif not exited and self._stop_asked(now):
                self.cancelled, self.term_at = True, now
                _signal_group(self.pgid, signal.SIGTERM)
            elif exited and _group_members(self.pgid):
                self.term_at = now  # descendants outlived the agent: stop them too
                _signal_group(self.pgid, signal.SIGTERM)
        elif (
            self.kill_at is None
            and now >= self.term_at + self.grace
            and (not exited or _group_members(self.pgid))
        ):
            self.kill_at = now
            _signal_group(self.pgid, signal.SIGKILL)
        if not exited:
            return False
        if self.gone_at is None and (self.term_at is None or not _group_members(self.pgid)):
            self.gone_at = now
        if self.kill_at is not None and now - self.kill_at > _AFTER_KILL_S:
            self.gone_at = self.gone_at or now
        return self.gone_at is not None


def run_process(
    argv: Sequence[str],
    *,
    cwd: Path | str,
    env: Mapping[str, str],
    timeout_s: float | None,
    kill_grace_s: float,
    tail_bytes: int = TAIL_BYTES,
    on_stdout_line: Callable[[bytes], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> ProcessResult:
    """Run ``argv`` (never through a shell) in its own process group and wait for it.

    Args:
        argv: the program and its arguments.
        cwd: its working directory.
        env: its whole environment.
        timeout_s: stop the process group after this long (None: no limit).
        kill_grace_s: between SIGTERM and SIGKILL.
        tail_bytes: how much of the end of stdout and of stderr to keep.
        on_stdout_line: called with each complete stdout line (without its newline).
        should_stop: asked about once a second; True stops the process group (its job was cancelled).
        on_start: called with the process group's id once it runs.

    Raises:
        OSError: the program could not be started (not found, not executable ...).
    """
    process = subprocess.Popen(
        list(argv), cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, start_new_session=True, close_fds=True,
    )  # fmt: skip
    assert process.stdout is not None and process.stderr is not None
    if on_start is not None:
        on_start(process.pid)  # a session leader's group id is its pid
    out, err = _Capture(tail_bytes, on_stdout_line), _Capture(tail_bytes, None)
    supervisor = _Supervisor(process, timeout_s, kill_grace_s, should_stop)
    pipes: dict[int, tuple[IO[bytes], _Capture]] = {
        process.stdout.fileno(): (process.stdout, out), process.stderr.fileno(): (process.stderr, err),
    }  # fmt: skip
    selector = selectors.DefaultSelector()
    try:
        for fd, (pipe, _) in pipes.items():
            os.set_blocking(fd, False)
            selector.register(pipe, selectors.EVENT_READ)
        _pump(selector, supervisor, pipes)
    finally:
        selector.close()
        if process.poll() is None:  # only when the loop itself failed: never leave the group running
            _signal_group(supervisor.pgid, signal.SIGKILL)
            process.wait()
        process.stdout.close()
        process.stderr.close()
        out.close()
    ended = supervisor.ended_at or time.monotonic()
    return ProcessResult(
        exit_code=process.returncode, stdout=out.text(), stderr=err.text(), stdout_bytes=out.total,
        stderr_bytes=err.total, timed_out=supervisor.timed_out, duration_s=ended - supervisor.started,
        cancelled=supervisor.cancelled,
    )  # fmt: skip


def _pump(
    selector: selectors.BaseSelector, supervisor: _Supervisor, pipes: dict[int, tuple[IO[bytes], _Capture]]
) -> None:
    while True:
        now = time.monotonic()
        if supervisor.step(now):
            open_pipes = bool(selector.get_map())
            if not open_pipes or now - (supervisor.gone_at or now) > _DRAIN_S:
                return
        if not selector.get_map():
            time.sleep(_POLL_S)
            continue
        for key, _ in selector.select(timeout=_POLL_S):
            pipe, capture = pipes[key.fd]
            try:
                chunk = os.read(key.fd, 65536)
            except BlockingIOError:
                continue
            if chunk:
                capture.feed(chunk)
            else:
                selector.unregister(pipe)

"""What the stand-in agents share: reading the prompt's directives and acting on them in the cwd.

A prompt that asks for "tests for FILE" (``Write unit tests for src/app.py.``) gets a file
``tests/test_<name>.py`` next to FILE (``src/tests/test_app.py``) holding a trivial test; FILE must be a
relative path inside the cwd. Besides, each line of the prompt that starts with a directive is acted
on, in order, and every other line is ignored (so a prompt can hold anything, quotes and ``$(...)``
included):

    write PATH: TEXT          create PATH (and its directories) holding TEXT and a newline
    append PATH: TEXT         add a line to PATH
    delete PATH               remove PATH
    commit MESSAGE            commit everything in the cwd's git repository (the agent's own commit)
    lock-index                leave the cwd's git index locked (so nobody else can commit there)
    sleep SECONDS             sleep
    grandchild PIDFILE        start a sleeping grandchild (same process group); its pid goes to PIDFILE
    stubborn-grandchild PIDFILE   the same, ignoring SIGTERM
    ignore-term               this process ignores SIGTERM from now on
    stderr TEXT               print TEXT on stderr
    chatter KIB               print KIB KiB of noise on stdout and on stderr (before the result)
    result TEXT               the result text
    fail SUBTYPE: TEXT        report an error (Claude: is_error with that subtype; Codex: turn.failed)
    exit CODE                 exit with CODE after printing the result
    usage A B C D [COST]      Claude: input, output, cache read, cache write tokens, total_cost_usd
                              Codex: input (cached included), cached input, output tokens per turn
    turns N                   number of turns reported
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

# The grandchild writes its pid once it is set up (signals ignored), so the parent knows it is ready.
_SLEEPER = (
    "import os, sys, time\nopen(sys.argv[1], 'w').write(str(os.getpid()))\n"
    "for _ in range(1200):\n    time.sleep(0.1)\n"
)
_STUBBORN = "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n" + _SLEEPER
_TESTS_FOR = re.compile(r"\btests for ([\w./\-]+)", re.IGNORECASE)
_TEST_FILE = """\"\"\"Unit tests for {target}.\"\"\"

from pathlib import Path


def test_{stem}_is_there() -> None:
    assert (Path(__file__).resolve().parents[1] / "{name}").is_file()
"""


@dataclass
class Plan:
    """What the prompt asked for."""

    result: str = "done"
    fail: tuple[str, str] | None = None
    exit_code: int = 0
    usage: list[float] = field(default_factory=list)
    turns: int = 1


def prompt_after(args: list[str], takes_value: set[str]) -> str:
    """The first positional argument, skipping options (and the values of ``takes_value`` options)."""
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg in takes_value:
            skip = True
        elif arg == "-":
            return sys.stdin.read()
        elif not arg.startswith("-"):
            return arg
    return ""


def _spawn(pidfile: str, code: str) -> None:
    subprocess.Popen([sys.executable, "-c", code, pidfile])
    deadline = time.monotonic() + 20
    while not Path(pidfile).exists() and time.monotonic() < deadline:
        time.sleep(0.01)


def _write(rest: str, plan: Plan, *, mode: str = "w") -> None:
    target, _, text = rest.partition(": ")
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open(mode, encoding="utf-8") as handle:
        handle.write(text + "\n")


def _commit(rest: str, plan: Plan) -> None:
    identity = ["-c", "user.name=agent", "-c", "user.email=agent@example.invalid"]
    subprocess.run(["git", "add", "-A"], check=True)
    subprocess.run(["git", *identity, "commit", "-q", "-m", rest], check=True)


def _lock_index(rest: str, plan: Plan) -> None:
    lock = subprocess.run(
        ["git", "rev-parse", "--git-path", "index.lock"], capture_output=True, text=True, check=True
    )
    Path(lock.stdout.strip()).write_text("")


def _chatter(rest: str, plan: Plan) -> None:
    noise = ("x" * 1023 + "\n") * int(rest)
    sys.stdout.write(noise)
    sys.stderr.write(noise)


def _ignore_term() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _fail(rest: str, plan: Plan) -> None:
    subtype, _, text = rest.partition(": ")
    plan.fail = (subtype, text)


_DIRECTIVES: dict[str, Callable[[str, Plan], None]] = {
    "write": _write,
    "append": lambda rest, plan: _write(rest, plan, mode="a"),
    "delete": lambda rest, plan: Path(rest).unlink(),
    "commit": _commit,
    "lock-index": _lock_index,
    "sleep": lambda rest, plan: time.sleep(float(rest)),
    "grandchild": lambda rest, plan: _spawn(rest, _SLEEPER),
    "stubborn-grandchild": lambda rest, plan: _spawn(rest, _STUBBORN),
    "ignore-term": lambda rest, plan: _ignore_term(),
    "stderr": lambda rest, plan: print(rest, file=sys.stderr, flush=True),
    "chatter": _chatter,
    "result": lambda rest, plan: setattr(plan, "result", rest),
    "fail": _fail,
    "exit": lambda rest, plan: setattr(plan, "exit_code", int(rest)),
    "usage": lambda rest, plan: setattr(plan, "usage", [float(value) for value in rest.split()]),
    "turns": lambda rest, plan: setattr(plan, "turns", int(rest)),
}


def write_tests_for(prompt: str) -> str | None:
    """When the prompt asks for tests for a file, write them; the test file's path (else None)."""
    match = _TESTS_FOR.search(prompt)
    target = match.group(1).rstrip(".,;:!?)]}") if match else ""
    path = PurePosixPath(target)
    if not target or path.is_absolute() or ".." in path.parts:
        return None
    stem = re.sub(r"\W+", "_", path.stem).strip("_") or "input"
    test = Path(*path.parent.parts, "tests", f"test_{stem}.py")
    test.parent.mkdir(parents=True, exist_ok=True)
    test.write_text(_TEST_FILE.format(target=target, stem=stem, name=path.name), encoding="utf-8")
    return test.as_posix()


def act(prompt: str) -> Plan:
    """Carry out the prompt's directives in the cwd; what to report."""
    plan = Plan()
    written = write_tests_for(prompt)
    if written is not None:
        plan.result = f"wrote {written}"
    for line in prompt.splitlines():
        verb, _, rest = line.strip().partition(" ")
        handler = _DIRECTIVES.get(verb)
        if handler is not None:
            handler(rest, plan)
    return plan

"""Running the demo's steps: print each real command, run it, keep its log, fail naming the step.

The demo is a script of the commands a user runs on a cluster (``mm-convert ...``,
``mm-run finetune ...``, ``mm-run infer ...``). Each is printed as it would be typed, run as a
subprocess of this Python (so the same installation is used), and its output both shown and
kept in ``<workdir>/logs/NN_<step>.log``. A failing step raises :class:`DemoStepError` with the
step's number and name, the command, the log file and the log's last lines.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mm_core.errors import MMError

# console scripts -> the module each runs, so commands work even when the venv's bin is not on PATH
ENTRY_MODULES = {"mm-run": "mm_core.cli.main", "mm-convert": "mm_convert.cli"}
TAIL_LINES = 25


class DemoStepError(MMError):
    """A demo step failed; the message names the step, the command and where its full log is."""


def _shown(argv: Sequence[str], workdir: Path) -> str:
    """The command as a user would type it, with paths under the work directory shortened."""
    prefix = str(workdir) + os.sep
    return " ".join(shlex.quote(a.replace(prefix, "")) if prefix in a else shlex.quote(a) for a in argv)


def _tail(path: Path, n: int = TAIL_LINES) -> str:
    if not path.is_file():
        return ""
    lines = path.read_text(errors="replace").replace("\r", "\n").splitlines()
    lines = [line for line in lines if line.strip()]
    return "\n".join("    " + line for line in lines[-n:])


@dataclass
class StepRunner:
    """Numbers the steps, prints them, runs commands and records how long each took."""

    workdir: Path
    total: int
    verbose: bool = True  # stream command output to the console (it always goes to the log)
    number: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)

    def begin(self, name: str, what: str) -> tuple[int, str]:
        self.number += 1
        print(f"\n[{self.number}/{self.total}] {what}", flush=True)
        return self.number, name

    def log_path(self, name: str) -> Path:
        logs = self.workdir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        return logs / f"{self.number:02d}_{name}.log"

    def fail(self, name: str, message: str, log: Path | None = None, stream: bool = False) -> DemoStepError:
        text = f"demo step {self.number}/{self.total} '{name}' failed: {message}"
        if log is not None and log.is_file():
            text += f"\n  full log: {log}"
            if not self.verbose or not stream:  # otherwise the output was just shown
                text += f"\n  last lines:\n{_tail(log)}"
        return DemoStepError(text)

    def run(self, name: str, argv: Sequence[str], *, env: dict[str, str] | None = None, stream: bool = True) -> float:
        """Run one command (``argv[0]`` a console script of this installation); returns seconds.

        ``stream=False`` keeps the output in the log only (e.g. hundreds of answers)."""
        argv = list(argv)
        shown = _shown(argv, self.workdir)
        self.commands.append(shown)
        print(f"$ {shown}", flush=True)
        exe = argv[0]
        if exe in ENTRY_MODULES:
            real = [sys.executable, "-m", ENTRY_MODULES[exe], *argv[1:]]
        elif exe == "python":
            real = [sys.executable, *argv[1:]]
        else:
            real = argv
        log = self.log_path(name)
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        t0 = time.perf_counter()
        with open(log, "w", encoding="utf-8") as sink:
            sink.write(f"$ {shlex.join(real)}\n")
            sink.flush()
            try:
                proc = subprocess.Popen(real, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=self.workdir,
                                        env=full_env)
            except OSError as e:
                raise self.fail(name, f"could not start `{shown}`: {e}") from None
            assert proc.stdout is not None
            while True:
                chunk = proc.stdout.read1(4096) if hasattr(proc.stdout, "read1") else proc.stdout.read(4096)
                if not chunk:
                    break
                text = chunk.decode(errors="replace")
                sink.write(text)
                sink.flush()
                if self.verbose and stream:
                    sys.stdout.write(text)
                    sys.stdout.flush()
            rc = proc.wait()
        seconds = time.perf_counter() - t0
        self.timings[name] = self.timings.get(name, 0.0) + seconds
        if rc != 0:
            raise self.fail(name, f"`{shown}` exited with status {rc}", log, stream)
        return seconds

    def note(self, name: str, seconds: float) -> None:
        """Record the time of a step done in this process."""
        self.timings[name] = self.timings.get(name, 0.0) + seconds

"""Running dfs-cli as users do, for the integration tests: one process per command, judged by
exit code, stdout and stderr only (INTERFACE.md, "dfs-cli")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CLI = [sys.executable, "-m", "dfs.cli"]
ERROR_PREFIX = "dfs-cli: error:"
# Variables that would change which cluster or how the CLI talks; tests set them explicitly.
SCRUBBED_ENV = ("DFS_META", "DFS_DEBUG", "DFS_SECRET_FILE")


@dataclass
class Run:
    args: list[str]
    code: int
    out: bytes
    err: str
    seconds: float

    @property
    def text(self) -> str:
        return self.out.decode(errors="replace")

    def json(self) -> Any:
        assert self.code == 0, self
        return json.loads(self.out)

    def __str__(self) -> str:  # shown by failing asserts
        return (f"dfs-cli {' '.join(self.args)} -> exit {self.code} in {self.seconds:.1f}s\n"
                f"stdout: {self.out[:2000]!r}\nstderr: {self.err[:2000]!r}")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
    env.update(extra)
    return env


def cli(*args: str, meta: str | None = None, stdin: bytes | None = None,
        cwd: Path | str | None = None, env: dict[str, str] | None = None,
        timeout: float = 60) -> Run:
    """Run `dfs-cli [--meta META] ARGS` to completion (stdin: these bytes, else /dev/null)."""
    argv = (["--meta", meta] if meta else []) + list(args)
    t0 = time.monotonic()
    proc = subprocess.run(
        CLI + argv, input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True, cwd=cwd, env=env if env is not None else clean_env(),
        timeout=timeout)
    return Run(argv, proc.returncode, proc.stdout, proc.stderr.decode(errors="replace"),
               time.monotonic() - t0)


def ok(run: Run) -> Run:
    """Exit 0, nothing on stderr."""
    assert run.code == 0, run
    assert run.err == "", run
    return run


def one_error_line(run: Run, *words: str, code: int | None = None) -> str:
    """A failure as INTERFACE.md promises: non-zero exit (or exactly `code`), exactly one line
    on stderr starting `dfs-cli: error:` and containing every word, no traceback anywhere."""
    assert run.code != 0, run
    if code is not None:
        assert run.code == code, run
    assert "Traceback" not in run.err and b"Traceback" not in run.out, run
    lines = run.err.splitlines()
    assert len(lines) == 1, run
    assert lines[0].startswith(ERROR_PREFIX), run
    for w in words:
        assert w in lines[0], (w, str(run))
    return lines[0]



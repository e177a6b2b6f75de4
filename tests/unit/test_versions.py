"""`--version` and `--help` of dfsd, dfs-bench and dfs-demo, run as users run them: real
subprocesses, judged by exit status and output."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys

import pytest

import dfs
from dfs import config
from dfs.daemon import build_parser

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROGRAMS = {"dfsd": "dfs.daemon", "dfs-bench": "dfs.bench.cli", "dfs-demo": "dfs.demo"}


def run(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("prog", PROGRAMS)
def test_version(prog: str) -> None:
    r = run(PROGRAMS[prog], "--version")
    assert (r.returncode, r.stdout, r.stderr) == (0, f"{prog} {dfs.__version__}\n", "")


def options(help_text: str) -> dict[str, str]:
    """Each option line of an argparse --help (`--port PORT`) -> its help text, joined up."""
    found: dict[str, str] = {}
    current = None
    for line in help_text.splitlines():
        if line.startswith("  -"):
            current, _, text = line.strip().partition("  ")
            found[current] = text.strip()
        elif current and line.startswith("    "):  # the help text goes on
            found[current] = (found[current] + " " + line.strip()).strip()
        else:
            current = None
    return found


@pytest.mark.parametrize("command", [["dfsd"], ["dfs-bench"], ["dfs-bench", "large"],
                                     ["dfs-bench", "small"], ["dfs-bench", "meta"],
                                     ["dfs-bench", "startup"], ["dfs-demo"]])
def test_every_option_that_takes_a_value_says_its_default(command: list[str]) -> None:
    r = run(PROGRAMS[command[0]], *command[1:], "--help")
    assert r.returncode == 0, r.stderr
    found = options(r.stdout)
    assert "-h, --help" in found and (len(command) > 1 or "--version" in found), r.stdout
    bare = []
    for invocation, text in found.items():
        takes_value = any(not word.startswith("-") for word in re.split(r",? ", invocation))
        if takes_value and "default" not in text:
            bare.append(invocation)
        if not text:
            bare.append(invocation)  # a flag, but nothing says what it does
    assert not bare, f"{' '.join(command)} --help: no default or no help for {bare}"


def test_dfsd_help_states_the_real_defaults() -> None:
    """Each `default: 3s` (or 64MiB) in dfsd --help parses back to the flag's default."""
    checked = 0
    for action in build_parser()._actions:
        if action.type not in (config.parse_size, config.parse_duration):
            continue
        if action.help == argparse.SUPPRESS:
            continue
        m = re.search(r"default: (\d[\w.]*)", action.help or "")
        if m is None:  # a default computed at start, described in words
            assert action.default in (None, 0), action.option_strings
            continue
        assert action.type(m.group(1)) == action.default, (action.option_strings, m.group(1))
        checked += 1
    assert checked >= 10

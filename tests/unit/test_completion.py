"""dfs.completion: the bash script run by a real bash, driven as bash drives it (COMP_WORDS and
COMP_CWORD in, COMPREPLY out), once through readline in an interactive bash on a pty, and the
zsh script parsed by a real zsh where one is installed."""

from __future__ import annotations

import argparse
import os
import pty
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Callable

import pytest

from dfs import completion
from dfs.bench.cli import build_parser as bench_parser
from dfs.cli import build_parser as cli_parser
from dfs.daemon import build_parser as daemon_parser

BASH = shutil.which("bash")
ZSH = shutil.which("zsh")


@pytest.fixture(scope="module")
def bash_script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("completion") / "dfs.bash"
    path.write_text(completion.script(cli_parser(), "bash", "dfs-cli")
                    + completion.script(daemon_parser(), "bash", "dfsd")
                    + completion.script(bench_parser(), "bash", "dfs-bench"))
    return path


def complete(script: Path, *words: str) -> list[str]:
    """COMPREPLY when the cursor ends the last of `words` (a "" word: after a space)."""
    assert BASH, "bash is not installed"
    fn = "_" + words[0].replace("-", "_")
    r = subprocess.run(
        [BASH, "--norc", "--noprofile", "-c",
         f'source "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); {fn}; '
         'printf "%s\\n" "${COMPREPLY[@]}"', "bash", str(script), *words],
        capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and not r.stderr, r.stderr
    return r.stdout.split()


def test_subcommand_names(bash_script: Path) -> None:
    assert complete(bash_script, "dfs-cli", "st") == ["stat", "status"]
    assert complete(bash_script, "dfs-cli", "") == commands(cli_parser())
    assert "setrep" in commands(cli_parser())
    assert complete(bash_script, "dfs-bench", "") == commands(bench_parser())
    assert "startup" in commands(bench_parser())


def commands(parser: argparse.ArgumentParser) -> list[str]:
    """The subcommands of a parser, in the order they were added."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return list(sub.choices)


def test_options_of_the_program_and_of_each_subcommand(bash_script: Path) -> None:
    assert complete(bash_script, "dfs-cli", "--me") == ["--meta"]
    ls = complete(bash_script, "dfs-cli", "ls", "-")
    assert "-l" in ls and "--json" in ls and "--meta" in ls
    assert "-p" not in ls and "--block-size" not in ls  # mkdir's and put's, not ls's
    assert complete(bash_script, "dfs-cli", "put", "--b") == ["--block-size"]
    assert complete(bash_script, "dfs-bench", "startup", "--f") == ["--files"]
    assert complete(bash_script, "dfsd", "--heart") == ["--heartbeat-interval"]
    assert complete(bash_script, "dfsd", "--upl") == []  # help=SUPPRESS: not offered


def test_option_values_are_skipped_when_finding_the_subcommand(bash_script: Path) -> None:
    # `put` is the value of --meta here; the subcommand is ls.
    ls = complete(bash_script, "dfs-cli", "--meta", "put", "ls", "--")
    assert "--json" in ls and "--block-size" not in ls
    # bash splits --meta=host:5000 into --meta, =, host, :, 5000.
    assert complete(bash_script, "dfs-cli", "--meta", "=", "put", "st") == ["stat", "status"]


def test_choices_of_an_option(bash_script: Path) -> None:
    assert complete(bash_script, "dfsd", "--role", "") == ["meta", "chunk"]
    assert complete(bash_script, "dfsd", "--role", "=", "c") == ["chunk"]
    assert complete(bash_script, "dfs-bench", "large", "--compare", "") == ["seaweedfs"]


def test_positionals_and_free_values_are_left_to_file_name_completion(bash_script: Path) -> None:
    assert complete(bash_script, "dfs-cli", "put", "") == []
    assert complete(bash_script, "dfs-cli", "put", "--secret-file", "") == []
    r = subprocess.run([BASH or "bash", "--norc", "--noprofile", "-c",
                        f'source "{bash_script}"; complete -p dfs-cli'],
                       capture_output=True, text=True, timeout=30)
    assert r.stdout.strip() == "complete -o default -F _dfs_cli dfs-cli", r.stdout + r.stderr


def _type_in_interactive_bash(script: Path, cwd: Path, line: str, want: bytes) -> bytes:
    """Type `line` (ending in a tab) into an interactive bash on a pty; what it echoed once
    `want` appears (or after 20 s)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: exec or die, never return into pytest
        try:
            os.chdir(cwd)
            env = {"PATH": os.environ.get("PATH", ""), "TERM": "dumb", "PS1": "$ ",
                   "HOME": str(cwd), "INPUTRC": "/dev/null"}
            os.execve(BASH or "bash", ["bash", "--norc", "--noprofile", "-i"], env)
        finally:
            os._exit(127)
    out = b""
    try:
        os.write(fd, f"source '{script}'\n".encode())
        os.write(fd, line.encode())
        deadline = time.monotonic() + 20
        while want not in out and time.monotonic() < deadline:
            if select.select([fd], [], [], 0.2)[0]:
                try:
                    out += os.read(fd, 65536)
                except OSError:  # the shell is gone
                    break
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        os.close(fd)
    return out


def test_readline_completes_file_names_for_a_positional(bash_script: Path,
                                                         tmp_path: Path) -> None:
    (tmp_path / "sample-one.txt").write_bytes(b"")
    out = _type_in_interactive_bash(bash_script, tmp_path, "dfs-cli put sam\t", b"sample-one.txt")
    assert b"dfs-cli put sample-one.txt" in out, out
    out = _type_in_interactive_bash(bash_script, tmp_path, "dfs-cli stat --js\t", b"--json")
    assert b"dfs-cli stat --json" in out, out


@pytest.mark.parametrize("prog, parser", [("dfs-cli", cli_parser), ("dfsd", daemon_parser),
                                          ("dfs-bench", bench_parser)])
def test_zsh_script(prog: str, parser: Callable[[], argparse.ArgumentParser],
                    tmp_path: Path) -> None:
    text = completion.script(parser(), "zsh", prog)
    assert text.startswith(f"#compdef {prog}\n")
    assert f"compdef _{prog} {prog}" in text
    if prog == "dfs-cli":
        for name in ("put", "stat", "status", "decommission"):
            assert f"'{name}:" in text
        assert "'*:LOCAL:_files'" in text and "'::path:_files'" in text
        assert "':REMOTE:_files'" not in text.split("__dfs_cli_put()")[1].split("}")[0]
        assert r"'--meta[meta server (default\: $DFS_META" in text
    if ZSH:
        path = tmp_path / f"_{prog}"
        path.write_text(text)
        r = subprocess.run([ZSH, "-n", str(path)], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
    # Without zsh on this machine, only the text above is checked: nothing ran it. (Driving
    # it in a real interactive zsh 5.9 was done by hand when it was written.)


def test_unknown_shell() -> None:
    with pytest.raises(ValueError, match="fish"):
        completion.script(cli_parser(), "fish", "dfs-cli")

"""Shell completion scripts generated from an argparse parser: text in, text out, no I/O.

The parser is walked once into a tree of commands (its options, the options that take a value,
their choices, its positionals and its subcommands), and that tree is written out as a bash
function or a zsh `_arguments` function. Both complete subcommand names and each command's
options; positionals and option values without choices are left to the shell's file name
completion (bash: `complete -o default`, zsh: `_files`).

    source <(dfs-cli completion bash)       # bash, or in ~/.bashrc
    dfs-cli completion zsh > "${fpath[1]}/_dfs-cli"     # zsh, before compinit runs
"""

from __future__ import annotations

import argparse
import re
import shlex
from dataclasses import dataclass, field

SHELLS = ("bash", "zsh")


@dataclass
class _Option:
    flags: list[str]
    help: str
    takes_value: bool
    metavar: str
    choices: list[str]
    repeatable: bool


@dataclass
class _Command:
    path: list[str]  # subcommand names from the top: [] for the program itself
    options: list[_Option] = field(default_factory=list)
    positionals: list[tuple[str, str | int | None, list[str]]] = field(default_factory=list)
    commands: dict[str, tuple[str, _Command]] = field(default_factory=dict)  # name -> help, cmd


def script(parser: argparse.ArgumentParser, shell: str, prog: str) -> str:
    """The completion script for `prog` in `shell` ("bash" or "zsh")."""
    if shell not in SHELLS:
        raise ValueError(f"no completion for shell {shell!r} (try {' or '.join(SHELLS)})")
    root = _walk(parser, [])
    return _bash(root, prog) if shell == "bash" else _zsh(root, prog)


# -- the tree --------------------------------------------------------------------------------

_REPEATABLE = (argparse._AppendAction, argparse._AppendConstAction, argparse._CountAction,
               argparse._ExtendAction)


def _walk(parser: argparse.ArgumentParser, path: list[str]) -> _Command:
    cmd = _Command(path)
    formatter = parser._get_formatter()
    for action in parser._actions:
        if action.help == argparse.SUPPRESS:
            continue
        text = " ".join(formatter._expand_help(action).split()) if action.help else ""
        choices = [str(c) for c in action.choices or ()]
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: " ".join((a.help or "").split()) for a in action._choices_actions}
            for name, sub in action.choices.items():
                cmd.commands[name] = (helps.get(name, ""), _walk(sub, [*path, name]))
        elif action.option_strings:
            metavar = action.metavar if isinstance(action.metavar, str) else action.dest.upper()
            cmd.options.append(_Option(list(action.option_strings), text, action.nargs != 0,
                                       metavar, choices, isinstance(action, _REPEATABLE)))
        else:
            name = action.metavar if isinstance(action.metavar, str) else action.dest
            cmd.positionals.append((name, action.nargs, choices))
    return cmd


def _all(cmd: _Command) -> list[_Command]:
    return [cmd] + [c for _, sub in cmd.commands.values() for c in _all(sub)]


def _ident(text: str) -> str:
    return re.sub(r"\W", "_", text)


# -- bash ------------------------------------------------------------------------------------

def _bash(root: _Command, prog: str) -> str:
    fn = f"_{_ident(prog)}"
    nodes, choices = [], []
    for cmd in _all(root):
        key = shlex.quote("/".join(cmd.path))
        flags = [f for o in cmd.options for f in o.flags]
        valued = [f for o in cmd.options if o.takes_value for f in o.flags]
        nodes.append(f"        {key}) opts={shlex.quote(' '.join(flags))}\n"
                     f"            valued={shlex.quote(' '.join(valued))}\n"
                     f"            cmds={shlex.quote(' '.join(cmd.commands))} ;;")
        for o in cmd.options:
            if o.choices:
                keys = "|".join(shlex.quote(f"{'/'.join(cmd.path)} {f}") for f in o.flags)
                choices.append(f"        {keys}) choices={shlex.quote(' '.join(o.choices))} ;;")
    return f"""# bash completion for {prog}, generated from its argument parser.
# Load it with: source <({prog} completion bash)

{fn}_node() {{  # the options, those taking a value, and the subcommands of command $1
    opts= valued= cmds=
    case "$1" in
{chr(10).join(nodes)}
    esac
}}

{fn}_choices() {{  # the values option $2 of command $1 accepts, if it names them
    choices=
    case "$1 $2" in
{chr(10).join(choices)}
    esac
}}

{fn}() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}} prev= path= word skip= i opts valued cmds choices
    COMPREPLY=()
    if ((COMP_CWORD > 0)); then prev=${{COMP_WORDS[COMP_CWORD-1]}}; fi
    # Find the subcommand at the cursor, stepping over option values (bash splits
    # --opt=value into three words: --opt, =, value).
    for ((i = 1; i < COMP_CWORD; i++)); do
        word=${{COMP_WORDS[i]}}
        if [[ -n $skip ]]; then
            skip=
            [[ $word == "=" ]] && skip=1
            continue
        fi
        {fn}_node "$path"
        if [[ " $valued " == *" $word "* ]]; then
            skip=1
        elif [[ $word != -* && " $cmds " == *" $word "* ]]; then
            path=${{path:+$path/}}$word
        fi
    done
    {fn}_node "$path"
    if [[ $prev == "=" ]] && ((COMP_CWORD > 1)); then
        prev=${{COMP_WORDS[COMP_CWORD-2]}}
    fi
    if [[ " $valued " == *" $prev "* ]]; then
        {fn}_choices "$path" "$prev"
        [[ -n $choices ]] && COMPREPLY=($(compgen -W "$choices" -- "$cur"))
        return 0  # a value without named choices: file names (complete -o default)
    fi
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$opts" -- "$cur"))
    elif [[ -n $cmds ]]; then
        COMPREPLY=($(compgen -W "$cmds" -- "$cur"))
    fi
    return 0  # a positional: file names (complete -o default)
}}

complete -o default -F {fn} {shlex.quote(prog)}
"""


# -- zsh -------------------------------------------------------------------------------------

def _zq(text: str) -> str:
    """Single-quote for zsh."""
    return "'" + text.replace("'", "'\\''") + "'"


_COLON = ":\\"  # characters a backslash quotes in a message or a name


def _spec_escape(text: str, chars: str) -> str:
    return re.sub(f"([{re.escape(chars)}])", r"\\\1", text)


def _zsh_value(metavar: str, choices: list[str], optional: bool = False) -> str:
    action = ("(" + " ".join(_spec_escape(c, "\\ ()") for c in choices) + ")" if choices
              else "_files")
    colons = "::" if optional else ":"
    return f"{colons}{_spec_escape(metavar, _COLON)}:{action}"


def _zsh_specs(cmd: _Command) -> list[str]:
    specs = []
    for o in cmd.options:
        desc = "[" + _spec_escape(o.help, "[]" + _COLON) + "]" if o.help else ""
        value = _zsh_value(o.metavar, o.choices) if o.takes_value else ""
        exclude = "*" if o.repeatable else f"({' '.join(o.flags)})" if len(o.flags) > 1 else ""
        specs += [f"{exclude}{flag}{desc}{value}" for flag in o.flags]
    for name, nargs, choices in cmd.positionals:
        if nargs in (None, 1):
            specs.append(_zsh_value(name, choices))
        elif nargs == "?":
            specs.append(_zsh_value(name, choices, optional=True))
        elif isinstance(nargs, int):
            specs += [_zsh_value(name, choices)] * nargs
        else:  # *, + and the rest of the line: zsh takes no positional after a `*` spec,
            # so `put LOCAL... REMOTE` completes file names for every word.
            specs.append("*" + _zsh_value(name, choices))
            break
    return specs


def _zsh_function(cmd: _Command, fn: str, prog: str) -> list[str]:
    """The function completing `cmd` (named fn), then those of its subcommands."""
    specs = [_zq(s) for s in _zsh_specs(cmd)]
    if not cmd.commands:
        return [f"{fn}() {{\n  " + " \\\n    ".join(["_arguments -S", *specs]) + "\n}\n"]
    args = " \\\n    ".join(["_arguments -S -C", *specs])
    entries = []
    for name, (text, _) in cmd.commands.items():
        entry = _spec_escape(name, _COLON)
        entries.append(_zq(f"{entry}:{text}" if text else entry))
    names = "\n        ".join(entries)
    subs = {name: f"__{_ident(prog)}_{_ident('_'.join(sub.path))}"
            for name, (_, sub) in cmd.commands.items()}
    cases = "\n".join(f"        {shlex.quote(name)}) {sub} ;;" for name, sub in subs.items())
    title = " ".join([prog, *cmd.path])
    out = [f"""{fn}() {{
  local curcontext=$curcontext state state_descr line ret=1
  typeset -A opt_args
  {args} \\
    ': :->command' \\
    '*:: :->argument' && ret=0
  case $state in
    command)
      local -a commands
      commands=(
        {names}
      )
      _describe -t commands {_zq(title + ' command')} commands && ret=0
      ;;
    argument)
      case $line[1] in
{cases}
      esac
      ;;
  esac
  return ret
}}
"""]
    for name, (_, sub) in cmd.commands.items():
        out += _zsh_function(sub, subs[name], prog)
    return out


def _zsh(root: _Command, prog: str) -> str:
    fn = f"_{prog}"
    if not re.fullmatch(r"[\w.+-]+", prog):
        raise ValueError(f"cannot name a zsh completion function after {prog!r}")
    body = "\n".join(_zsh_function(root, fn, prog))
    return f"""#compdef {prog}
# zsh completion for {prog}, generated from its argument parser.
# Install it as a file named {fn} in a directory of $fpath (before compinit runs), or load
# it in a shell where compinit has run with: source <({prog} completion zsh)

{body}
if [[ $funcstack[1] == {fn} ]]; then
  {fn} "$@"  # autoloaded from $fpath: complete now
else
  compdef {fn} {prog}
fi
"""

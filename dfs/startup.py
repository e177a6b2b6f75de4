"""The two ways a dfsd stops with one line instead of a traceback. Their own module, so that
`python -m dfs.daemon` (where daemon.py runs as __main__) and the modules it imports (dfs.ha.run
imports helpers from dfs.daemon) raise and catch the same classes."""


class StartupError(Exception):
    """One clear line for the operator; no traceback."""


class FatalError(Exception):
    """The role cannot go on (its journal failed): one line, exit status 1."""

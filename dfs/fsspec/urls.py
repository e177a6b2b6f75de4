"""`dfs://` URLs for fsspec: pure string functions, no I/O, so they are tested alone.

Forms accepted (INTERFACE.md, fsspec section):
    dfs://HOST:PORT/path   the meta address is in the URL
    dfs://H1:P1,H2:P2/path the addresses of an HA cluster's metas are in the URL
    dfs:///path            the meta address comes from `meta=`, else $DFS_META
    dfs:/path, /path       a path on the filesystem at hand
Paths come out absolute, with single slashes and no trailing slash (the root stays "/").
"""

from __future__ import annotations

PROTOCOL = "dfs"
_PREFIX = PROTOCOL + "://"


def split_url(url: str) -> tuple[str, str]:
    """(meta address or "", absolute path) of a URL or plain path."""
    netloc = ""
    if url.startswith(_PREFIX):
        netloc, slash, rest = url[len(_PREFIX):].partition("/")
        url = slash + rest
    elif url.startswith(PROTOCOL + ":"):
        url = url[len(PROTOCOL) + 1:]
    return netloc, normalise(url)


def normalise(path: str) -> str:
    """Absolute, single slashes, no trailing slash: "a//b/" -> "/a/b"."""
    return "/" + "/".join(part for part in path.split("/") if part)


def join_url(meta: str, path: str) -> str:
    """The full URL of `path` on the cluster whose meta is at `meta` (HOST:PORT)."""
    return f"{_PREFIX}{meta}{normalise(path)}"

"""Checks for the fields of a request header: one rule per kind of value, used by every role.

Pure functions, no I/O. Each raises BadRequest naming the field, so a peer's malformed request
gets one clear error and nothing else happens. The one integer rule: an integer on the wire is
a msgpack integer (`type(v) is int`), never a bool or a float that compares equal to one, and
every integer field of the protocol is non-negative.
"""

from __future__ import annotations

from typing import Any

from ..errors import BadRequest

_MISSING = object()


def is_uint(v: Any) -> bool:
    return type(v) is int and v >= 0


def uint(header: dict[str, Any], key: str, default: Any = _MISSING) -> int:
    """A non-negative integer field (or `default` when the field is absent)."""
    v = header.get(key, _MISSING)
    if v is _MISSING:
        if default is _MISSING:
            raise BadRequest(f"field {key!r} is required")
        return int(default)
    if not is_uint(v):
        raise BadRequest(f"field {key!r} must be a non-negative integer")
    return int(v)


def text(header: dict[str, Any], key: str) -> str:
    v = header.get(key)
    if not isinstance(v, str):
        raise BadRequest(f"field {key!r} must be a string")
    return v


def addrs(header: dict[str, Any], key: str, limit: int | None = None) -> list[str]:
    """A list of HOST:PORT strings (absent: empty)."""
    v = header.get(key) or []
    if not isinstance(v, list) or not all(isinstance(a, str) for a in v):
        raise BadRequest(f"field {key!r} must be a list of addresses")
    if limit is not None and len(v) > limit:
        raise BadRequest(f"field {key!r} lists more than {limit} addresses")
    return v


def rows(header: dict[str, Any], key: str, names: tuple[str, ...]) -> list[list[int]]:
    """A list of rows of non-negative integers shaped like `names`, e.g. a block report of
    [id, gen, size, digest] rows (absent: empty)."""
    v = header.get(key) or []
    if not isinstance(v, list) or not all(
            isinstance(r, list) and len(r) == len(names) and all(is_uint(x) for x in r)
            for r in v):
        raise BadRequest(f"field {key!r} must be a list of [{', '.join(names)}]")
    return v


MTIME_LIMIT = 1e11  # seconds either side of 1970: year 5138, and any pre-1970 file's date


def mtime(header: dict[str, Any], key: str, default: float) -> float:
    """A modification time in seconds since 1970 (int or float, finite, |t| < 10^11; files
    from before 1970 have negative ones); absent or nil: `default`."""
    v = header.get(key)
    if v is None:
        return default
    if type(v) not in (int, float) or not -MTIME_LIMIT < v < MTIME_LIMIT:
        raise BadRequest(f"field {key!r} must be seconds since 1970")
    return float(v)


_ATTR_LIMITS = {"mode": 0o7777, "uid": 2**32 - 1, "gid": 2**32 - 1}


def attrs(m: Any, what: str = "attrs") -> tuple[int | None, int | None, int | None]:
    """mode, uid, gid from a map holding any of them (absent or nil: not set). Permission
    bits only in mode (0..0o7777); ids are 32-bit, as on Linux."""
    if m is None:
        return None, None, None
    if not isinstance(m, dict):
        raise BadRequest(f"field {what!r} must be a map of mode, uid, gid")
    out: list[int | None] = []
    for key, limit in _ATTR_LIMITS.items():
        v = m.get(key)
        if v is not None and (not is_uint(v) or v > limit):
            raise BadRequest(f"{key} in {what!r} must be an integer 0..{limit:#o}"
                             if key == "mode" else
                             f"{key} in {what!r} must be an integer 0..{limit}")
        out.append(v)
    return out[0], out[1], out[2]

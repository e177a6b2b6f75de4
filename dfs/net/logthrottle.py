"""Warnings a peer can cause at will, rate-limited: for each key (a peer's host), the first
event is logged and the ones after it are only counted; once `interval` seconds have passed,
one line sums them up, and so on for as long as they keep coming. A key with nothing held back
at the end of its interval is forgotten, so the next event is logged in full again.

Pure bookkeeping, no I/O and no clock of its own: the caller passes the time and writes the
lines (dfs/net/server.py, for failed `auth` attempts), so a flood of bad requests costs the log
one line per host per interval, not one per request. At most `max_keys` hosts are kept apart;
past that, the others share one key, OTHERS.
"""

from __future__ import annotations

OTHERS = "other hosts"


class LogThrottle:
    def __init__(self, interval: float, max_keys: int = 100) -> None:
        self.interval = interval
        self.max_keys = max_keys
        self._windows: dict[str, tuple[float, int]] = {}  # key -> (start, events held back)

    def note(self, key: str, now: float) -> bool:
        """One event under `key`: True if it is to be logged now, False if it was counted."""
        windows = self._windows
        if key not in windows and len(windows) >= self.max_keys:
            key = OTHERS
        window = windows.get(key)
        if window is None:
            windows[key] = (now, 0)
            return True
        windows[key] = (window[0], window[1] + 1)
        return False

    def due(self, now: float, every: bool = False) -> list[tuple[str, int, float]]:
        """(key, events held back, seconds since the interval began) for each key whose
        interval is over and held some back (every such key with `every`: the server stops).
        Those keys start a new interval; keys that held nothing back are forgotten."""
        out = []
        for key, (start, held) in list(self._windows.items()):
            if now - start < self.interval and not every:
                continue
            if held:
                out.append((key, held, now - start))
            if held and not every:
                self._windows[key] = (now, 0)
            else:
                del self._windows[key]
        return out

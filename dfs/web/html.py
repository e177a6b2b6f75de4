"""Server-rendered HTML for the status pages: one layout, inline CSS, no external assets (a
cluster may have no internet), and every name escaped (`esc`) before it reaches the page.

Pages work with JavaScript off; with it on, a few lines of inline script reload the page
every REFRESH_S seconds while the tab is visible. Counts that need attention get a colour
and a word (`badge`), never colour alone.
"""

from __future__ import annotations

import html
import time
from typing import Collection, Iterable

REFRESH_S = 5

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d2530;
background:#f5f7fa}
header{background:#1f3b57;color:#fff;padding:10px 24px;display:flex;gap:24px;align-items:baseline}
header b{font-size:17px}header a{color:#cfe3ff;text-decoration:none}
header a.on{color:#fff;text-decoration:underline}
main{padding:16px 24px;max-width:1200px}
h1{font-size:20px;margin:8px 0 14px}h2{font-size:16px;margin:22px 0 8px}
table{border-collapse:collapse;background:#fff;min-width:480px}
th,td{padding:5px 12px;border-bottom:1px solid #e3e8ef;text-align:left;vertical-align:middle}
th{background:#eef2f7;font-weight:600}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{background:#fff;border:1px solid #dde3ea;border-radius:6px;padding:10px 14px;min-width:150px}
.card .v{font-size:22px;font-weight:600}.card .k{color:#5b6878;font-size:12px}
.bar{display:inline-block;width:160px;height:10px;background:#e3e8ef;border-radius:5px;
overflow:hidden;vertical-align:middle;margin-right:6px}
.bar i{display:block;height:100%;background:#3d7bd9}.bar i.hot{background:#d9822b}
.bar i.full{background:#c2362f}
.badge{display:inline-block;padding:1px 8px;border-radius:9px;font-size:12px;font-weight:600}
.ok{background:#dff3e4;color:#1d6b33}.warn{background:#fdecd3;color:#8a4b08}
.bad{background:#fbe0de;color:#9d1c14}.muted{color:#6b7786}
tr.bad td{background:#fdf1f0}tr.warn td{background:#fff8ec}
a{color:#1f5fae}code{font-size:13px}
.pager{margin:10px 0}
"""

_SCRIPT = f"""<script>
setTimeout(function r(){{if(document.visibilityState==="visible")location.reload();
else setTimeout(r,{REFRESH_S * 1000});}},{REFRESH_S * 1000});
</script>"""

NAV = (("/", "Overview"), ("/chunkservers", "Chunkservers"), ("/browse", "Browse"))


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def page(title: str, body: str, *, role: str, active: str = "", refresh: bool = True,
         nav: Iterable[tuple[str, str]] = NAV) -> str:
    links = " ".join(f'<a href="{href}"{" class=on" if href == active else ""}>{esc(name)}</a>'
                     for href, name in nav)
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8>"
            f"<meta name=viewport content='width=device-width,initial-scale=1'>"
            f"<title>{esc(title)} - dfs {esc(role)}</title><style>{_CSS}</style></head>"
            f"<body><header><b>dfs {esc(role)}</b>{links}</header><main>{body}</main>"
            f"{_SCRIPT if refresh else ''}</body></html>")


def badge(text: str, level: str) -> str:
    """level: ok, warn or bad (a colour) — the text carries the meaning on its own."""
    return f'<span class="badge {level}">{esc(text)}</span>'


def count_badge(n: int, word: str, level: str = "bad") -> str:
    """A count that needs attention when above zero: highlighted with its word."""
    return badge(f"{n:,} {word}", level) if n else f'<span class="muted">0 {esc(word)}</span>'


def bar(used: int, total: int) -> str:
    frac = used / total if total else 0.0
    kind = "full" if frac >= 0.9 else "hot" if frac >= 0.75 else ""
    return (f'<span class=bar title="{frac:.0%}"><i class="{kind}" '
            f'style="width:{min(frac, 1.0) * 100:.1f}%"></i></span>{frac:.0%}')


def size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def duration(seconds: float) -> str:
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d {hours}h {minutes}m"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {s}s" if minutes else f"{s}s"


def when(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def card(label: str, value: str) -> str:
    return f'<div class=card><div class=v>{value}</div><div class=k>{esc(label)}</div></div>'


def table(headers: list[str], rows: list[str], numeric: Collection[int] = ()) -> str:
    head = "".join(f'<th{" class=n" if i in numeric else ""}>{esc(h)}</th>'
                   for i, h in enumerate(headers))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def row(cells: list[str], numeric: Collection[int] = (), cls: str = "") -> str:
    tds = "".join(f'<td{" class=n" if i in numeric else ""}>{c}</td>'
                  for i, c in enumerate(cells))
    return f'<tr{f" class={cls}" if cls else ""}>{tds}</tr>'

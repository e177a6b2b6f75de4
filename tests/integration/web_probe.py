"""Talking to a dfsd's HTTP side door from tests: GET with errors as values, the URL of a
daemon's route, and /metrics parsed with prometheus-client's own parser."""

from __future__ import annotations

import urllib.error
import urllib.request

from cluster import Cluster
from prometheus_client.parser import text_string_to_metric_families

from dfs.local_cluster import HOST


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of a GET, errors included."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}),
                                    timeout=20) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def url(c: Cluster, path: str, daemon: str = "meta") -> str:
    return f"http://{HOST}:{c[daemon].http_port}{path}"


def scrape(target: str) -> dict[str, float]:
    """`name{label="v",...}` -> value, from a real /metrics page."""
    status, headers, body = get(target)
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out

"""The status pages in a real browser: Debian's headless Chromium opens `/`, `/chunkservers`
and `/browse` of a live cluster with a dead chunkserver, the test reads what a person would
see in the DOM it rendered, follows the download link, and keeps a screenshot of each page
(under $DFS_TEST_ARTIFACTS if set, else the test's tmp dir; the path is printed).

`bin/install-test-deps` (the first step of the README's test command) installs chromium."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import urllib.request
from html import unescape
from pathlib import Path
from typing import Callable

import pytest
from cluster import Cluster, data_of

from dfs.local_cluster import HOST, wait_until

MiB = 1 << 20
HOSTILE = "<img src=x onerror=alert(1)>.txt"


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("chromium is not installed: run `sh bin/install-test-deps` (the README's "
                "test command does)")


class Browser:
    """One headless Chromium per call, with its own empty profile and no background
    networking (the machine may have no internet)."""

    def __init__(self, profile: Path, shots: Path) -> None:
        self.profile, self.shots = profile, shots
        self.exe = chromium()

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = [self.exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
               "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
               f"--user-data-dir={self.profile}", "--window-size=1280,900", *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc

    def dom(self, url: str) -> str:
        return self._run("--dump-dom", url).stdout

    def screenshot(self, url: str, name: str) -> Path:
        path = self.shots / f"{name}.png"
        self._run(f"--screenshot={path}", url)
        assert path.stat().st_size > 5000  # a rendered page, not an empty image
        print(f"screenshot: {path}")
        return path


def text(dom: str) -> str:
    """What a person reads: the DOM without tags, entities decoded, spaces collapsed."""
    body = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", " ", body)))


@pytest.fixture
def browser(tmp_path: Path) -> Browser:
    shots = Path(os.environ.get("DFS_TEST_ARTIFACTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    return Browser(tmp_path / "profile", shots)


def test_pages_in_a_real_browser(make_cluster: Callable[..., Cluster], browser: Browser) -> None:
    c = make_cluster(3, http=True)
    client = c.client()
    data = data_of(3 * MiB + 7, seed=5)
    client.put_bytes(data, "/photos/summer trip.bin", block_size=MiB)
    client.put_bytes(b"not a script", f"/photos/{HOSTILE}")
    client.mkdir("/photos/2026", parents=True)
    c.kill("chunk2")
    dead = c["chunk2"].addr
    wait_until(lambda: c.states().get(dead) == "dead", 20, "chunk2 seen dead")
    meta = f"http://{HOST}:{c.meta.http_port}"

    seen = text(browser.dom(f"{meta}/"))
    assert "Cluster overview" in seen and re.search(r"\b2 files\b", seen), seen
    assert re.search(r"\b2 live\b", seen) and re.search(r"\b1 dead\b", seen), seen
    assert "serving" in seen
    browser.screenshot(f"{meta}/", "overview")

    with urllib.request.urlopen(f"{meta}/chunkservers", timeout=30) as r:
        served = r.read().decode()  # what a browser with JavaScript off gets: all of it
    dom = browser.dom(f"{meta}/chunkservers")
    seen = text(dom)
    assert text(served).count(" live ") == seen.count(" live ")
    for d in c.chunkservers:
        assert d.addr in seen
    assert re.search(re.escape(dead) + r" dead\b", seen), seen
    assert len(re.findall(r"\blive\b", seen)) >= 2
    assert "<svg" in dom  # the picture of space per server
    browser.screenshot(f"{meta}/chunkservers", "chunkservers")

    dom = browser.dom(f"{meta}/browse?path=/photos")
    seen = text(dom)
    assert "summer trip.bin" in seen and "2026/" in seen and HOSTILE in seen
    assert "<img" not in dom  # the hostile name is text, not an element
    browser.screenshot(f"{meta}/browse?path=/photos", "browse")

    file_page = f"{meta}/browse?path=/photos/summer%20trip.bin"
    dom = browser.dom(file_page)
    seen = text(dom)
    assert "Blocks" in seen and len(re.findall(r"under-replicated|healthy", seen)) == 4
    link = re.search(r'<a id="download" href="([^"]+)"', dom)
    assert link, dom
    with urllib.request.urlopen(meta + unescape(link.group(1)), timeout=30) as r:
        assert r.read() == data  # the download link works, a replica's server dead
    browser.screenshot(file_page, "file")

    chunk = f"http://{HOST}:{c['chunk0'].http_port}/"
    seen = text(browser.dom(chunk))
    assert "Chunkserver" in seen and c["chunk0"].addr in seen and c.meta_addr in seen
    browser.screenshot(chunk, "chunkserver")

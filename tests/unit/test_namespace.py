"""dfs.meta.namespace: path rules, the directory tree and its counters. Pure code, no I/O."""

from __future__ import annotations

import pytest

from dfs.errors import (
    AlreadyExists,
    BadRequest,
    DirectoryNotEmpty,
    IsADirectory,
    NotADirectory,
    NotFound,
)
from dfs.meta.namespace import (
    MAX_NAME,
    MAX_PATH,
    Block,
    Dir,
    File,
    Namespace,
    iter_files,
    normalise,
    split_path,
)


def mkfile(nblocks: int = 1, size: int = 10, mtime: float = 1.0) -> File:
    return File([Block(100 + i, 1, size) for i in range(nblocks)], 2, 64 * 1024, mtime)


def counts(ns: Namespace) -> tuple[int, int]:
    """(files, blocks) by walking the tree, to check the running counters against."""
    files = list(iter_files(ns.root))
    return len(files), sum(len(f.blocks) for f in files)


def check_counters(ns: Namespace) -> None:
    assert (ns.files, ns.blocks) == counts(ns)


def tree(ns: Namespace, path: str = "/") -> dict:
    """The tree as nested dicts: dirs are dicts, files are their block-id lists."""
    node = ns.lookup(path)
    if isinstance(node, File):
        return [b.id for b in node.blocks]  # type: ignore[return-value]
    base = "" if path == "/" else path
    return {n: tree(ns, f"{base}/{n}") for n in node.names()}


# -- path validation ------------------------------------------------------------------------

@pytest.mark.parametrize("path,parts", [
    ("/", []),
    ("/a", ["a"]),
    ("/a/b/c", ["a", "b", "c"]),
    ("/a/", ["a"]),
    ("/a/b/", ["a", "b"]),
    ("/./a/./b/.", ["a", "b"]),
    ("/.", []),
    ("/./", []),
    ("/...", ["..."]),
    ("/.a/..b/a..", [".a", "..b", "a.."]),
    ("/a b/ü/\\", ["a b", "ü", "\\"]),
    ("/" + "n" * MAX_NAME, ["n" * MAX_NAME]),
    ("/" + "/".join(["d" * 100] * 40), ["d" * 100] * 40),
])
def test_valid_paths(path: str, parts: list[str]) -> None:
    assert split_path(path) == parts
    assert normalise(path) == "/" + "/".join(parts)


@pytest.mark.parametrize("path", [
    "", "a", "a/b", "./a", "~/a", " /a",
    "/a/../b", "/..", "/a/..",
    "/a\x00b", "/\x00",
    "//", "//a", "/a//b", "/a//", "/a/b//",
    "/" + "n" * (MAX_NAME + 1),
    "/" + "/".join(["d" * 200] * 21),  # > MAX_PATH characters
    None, 5, b"/a", ["/a"],
], ids=lambda p: repr(p)[:30])
def test_invalid_paths(path) -> None:
    with pytest.raises(BadRequest):
        split_path(path)


def test_max_path_is_inclusive() -> None:
    path = "/" + "/".join(["d" * 200] * 20)
    path += "/" + "e" * (MAX_PATH - len(path) - 1)
    assert len(path) == MAX_PATH
    assert normalise(path) == path
    with pytest.raises(BadRequest):
        split_path(path + "e")


# -- mkdir ----------------------------------------------------------------------------------

def test_mkdir_and_parents() -> None:
    ns = Namespace()
    assert ns.mkdir("/a", False, 1.0) is True
    assert ns.mkdir("/a/b/c", True, 2.0) is True
    assert isinstance(ns.lookup("/a/b/c"), Dir)
    assert ns.mkdir("/a/b/c", True, 3.0) is False  # -p on an existing dir is fine
    assert ns.mkdir("/", True, 3.0) is False
    assert ns.lookup("/a/b").mtime == 2.0
    assert ns.lookup("/a").mtime == 2.0  # gained a child
    assert tree(ns) == {"a": {"b": {"c": {}}}}


@pytest.mark.parametrize("path,parents,exc", [
    ("/d", False, AlreadyExists),
    ("/", False, AlreadyExists),
    ("/f", False, AlreadyExists),
    ("/f", True, AlreadyExists),  # a file is in the way even with -p
    ("/missing/x", False, NotFound),
    ("/f/x", False, NotADirectory),
    ("/f/x", True, NotADirectory),
    ("/d/f/x/y", True, NotADirectory),
    ("/a/../b", True, BadRequest),
])
def test_mkdir_errors(path: str, parents: bool, exc: type) -> None:
    ns = Namespace()
    ns.mkdir("/d", False, 1.0)
    ns.publish("/f", mkfile())
    ns.publish("/d/f", mkfile())
    before = tree(ns)
    with pytest.raises(exc):
        ns.mkdir(path, parents, 5.0)
    assert tree(ns) == before  # a failed mkdir changes nothing
    check_counters(ns)


# -- publish --------------------------------------------------------------------------------

def test_publish_creates_parents_and_replaces_a_file() -> None:
    ns = Namespace()
    first = mkfile(2)
    assert ns.publish("/x/y/f", first) is None
    assert (ns.files, ns.blocks) == (1, 2)
    assert isinstance(ns.lookup("/x/y"), Dir)
    second = mkfile(3, mtime=7.0)
    assert ns.publish("/x/y/f", second) is first
    assert ns.lookup("/x/y/f") is second
    assert (ns.files, ns.blocks) == (1, 3)
    assert ns.lookup("/x/y").mtime == 7.0
    assert second.size == 30
    check_counters(ns)


@pytest.mark.parametrize("path,exc", [
    ("/d", IsADirectory),
    ("/", IsADirectory),
    ("/f/x", NotADirectory),
    ("bad", BadRequest),
])
def test_publish_errors(path: str, exc: type) -> None:
    ns = Namespace()
    ns.mkdir("/d", False, 1.0)
    ns.publish("/f", mkfile())
    with pytest.raises(exc):
        ns.publish(path, mkfile(5))
    assert (ns.files, ns.blocks) == (1, 1)
    check_counters(ns)


def test_check_file_path() -> None:
    ns = Namespace()
    ns.mkdir("/d", False, 1.0)
    ns.publish("/f", mkfile())
    ns.check_file_path("/new")
    ns.check_file_path("/f")  # replacing a file is fine
    ns.check_file_path("/d/new/deeper")
    for path, exc in [("/d", IsADirectory), ("/", IsADirectory), ("/f/x", NotADirectory),
                      ("/../x", BadRequest)]:
        with pytest.raises(exc):
            ns.check_file_path(path)


def test_empty_file() -> None:
    ns = Namespace()
    ns.publish("/empty", File([], 2, 65536, 1.0))
    node = ns.lookup("/empty")
    assert isinstance(node, File) and node.size == 0 and node.blocks == []
    assert (ns.files, ns.blocks) == (1, 0)


# -- remove ---------------------------------------------------------------------------------

def build() -> Namespace:
    ns = Namespace()
    ns.mkdir("/empty", False, 1.0)
    ns.publish("/f", mkfile(1))
    ns.publish("/d/a", mkfile(2))
    ns.publish("/d/sub/b", mkfile(3))
    ns.publish("/d/sub/deeper/c", mkfile(4))
    check_counters(ns)
    assert (ns.files, ns.blocks) == (4, 10)
    return ns


def test_remove_file() -> None:
    ns = build()
    removed = ns.remove("/f", False, 9.0)
    assert [len(f.blocks) for f in removed] == [1]
    assert (ns.files, ns.blocks) == (3, 9)
    assert ns.root.mtime == 9.0
    with pytest.raises(NotFound):
        ns.lookup("/f")
    check_counters(ns)


def test_remove_empty_dir() -> None:
    ns = build()
    assert ns.remove("/empty", False, 9.0) == []
    assert "empty" not in ns.root.children
    check_counters(ns)


def test_remove_non_empty_dir_needs_recursive() -> None:
    ns = build()
    with pytest.raises(DirectoryNotEmpty):
        ns.remove("/d", False, 9.0)
    assert (ns.files, ns.blocks) == (4, 10)
    removed = ns.remove("/d", True, 9.0)
    assert sorted(len(f.blocks) for f in removed) == [2, 3, 4]
    assert (ns.files, ns.blocks) == (1, 1)
    check_counters(ns)


@pytest.mark.parametrize("path,exc", [
    ("/", BadRequest),
    ("/nope", NotFound),
    ("/nope/x", NotFound),
    ("/f/x", NotADirectory),
    ("/d/../f", BadRequest),
])
def test_remove_errors(path: str, exc: type) -> None:
    ns = build()
    with pytest.raises(exc):
        ns.remove(path, True, 9.0)
    assert (ns.files, ns.blocks) == (4, 10)


# -- rename ---------------------------------------------------------------------------------

def test_rename_file_to_a_new_name() -> None:
    ns = build()
    f = ns.lookup("/f")
    assert ns.rename("/f", "/d/g", 5.0) == ("/d/g", None)
    assert ns.lookup("/d/g") is f
    with pytest.raises(NotFound):
        ns.lookup("/f")
    assert ns.root.mtime == 5.0 and ns.lookup("/d").mtime == 5.0
    assert (ns.files, ns.blocks) == (4, 10)
    check_counters(ns)


def test_rename_file_over_an_existing_file_replaces_it() -> None:
    ns = build()
    src, old = ns.lookup("/f"), ns.lookup("/d/a")
    final, replaced = ns.rename("/f", "/d/a", 5.0)
    assert final == "/d/a" and replaced is old
    assert ns.lookup("/d/a") is src
    assert (ns.files, ns.blocks) == (3, 8)
    check_counters(ns)


def test_rename_into_an_existing_directory() -> None:
    ns = build()
    assert ns.rename("/f", "/empty", 5.0) == ("/empty/f", None)
    assert ns.rename("/d/sub", "/empty/", 6.0) == ("/empty/sub", None)
    assert tree(ns) == {"d": {"a": [100, 101]}, "empty": {
        "f": [100], "sub": {"b": [100, 101, 102], "deeper": {"c": [100, 101, 102, 103]}}}}
    check_counters(ns)


def test_rename_into_a_directory_replaces_a_file_of_the_same_name() -> None:
    ns = build()
    ns.publish("/other/a", mkfile(7))
    final, replaced = ns.rename("/other/a", "/d", 5.0)
    assert final == "/d/a" and replaced is not None and len(replaced.blocks) == 2
    assert (ns.files, ns.blocks) == (4, 15)
    check_counters(ns)


def test_rename_directory_to_a_new_name() -> None:
    ns = build()
    assert ns.rename("/d", "/e", 5.0) == ("/e", None)
    assert ns.lookup("/e/sub/deeper/c").size == 40
    assert "d" not in ns.root.children
    check_counters(ns)


@pytest.mark.parametrize("src,dst,final", [
    ("/f", "/f", "/f"),
    ("/d/a", "/d", "/d/a"),  # into its own parent: nothing moves
    ("/d", "/", "/d"),
    ("/f/", "/./f", "/f"),
])
def test_rename_onto_itself_is_a_no_op(src: str, dst: str, final: str) -> None:
    ns = build()
    before = tree(ns)
    assert ns.rename(src, dst, 5.0) == (final, None)
    assert tree(ns) == before
    check_counters(ns)


@pytest.mark.parametrize("src,dst,exc", [
    ("/d", "/d", BadRequest),  # an existing dir as dst means "into it", as in mv(1)
    ("/d", "/d/sub", BadRequest),  # into itself (an existing child)
    ("/d", "/d/new", BadRequest),  # into itself (a new name)
    ("/d", "/d/sub/deeper/x", BadRequest),
    ("/", "/x", BadRequest),
    ("/d", "/f", AlreadyExists),  # a directory over an existing file
    ("/d/sub", "/", AlreadyExists),  # /sub is made a directory below
    ("/empty", "/d/sub/..", BadRequest),
    ("/f", "/missing/g", NotFound),  # missing destination parent
    ("/missing", "/g", NotFound),
    ("/missing/x", "/g", NotFound),
    ("/f", "/f/x", NotADirectory),
    ("/d/a", "/f/x/y", NotADirectory),
])
def test_rename_errors(src: str, dst: str, exc: type) -> None:
    ns = build()
    if (src, dst) == ("/d/sub", "/"):
        ns.mkdir("/sub", False, 1.0)  # /sub is a directory that already exists
    before = tree(ns)
    with pytest.raises(exc):
        ns.rename(src, dst, 5.0)
    assert tree(ns) == before  # a failed rename changes nothing
    check_counters(ns)


def test_rename_file_into_a_directory_holding_a_directory_of_that_name() -> None:
    ns = build()
    ns.mkdir("/x/f", True, 1.0)
    with pytest.raises(AlreadyExists):
        ns.rename("/f", "/x", 5.0)


def test_rename_of_a_prefix_named_sibling_is_not_into_itself() -> None:
    ns = build()
    ns.mkdir("/dd", False, 1.0)
    assert ns.rename("/d", "/dd", 5.0) == ("/dd/d", None)
    check_counters(ns)


# -- listdir --------------------------------------------------------------------------------

def test_listdir_pages_through_25000_entries_in_order() -> None:
    ns = Namespace()
    names = [f"e{i:06d}" for i in range(25_000)]
    import random
    shuffled = names[:]
    random.Random(5).shuffle(shuffled)
    for i, n in enumerate(shuffled):
        if i % 2:
            ns.mkdir(f"/big/{n}", True, 1.0)
        else:
            ns.publish(f"/big/{n}", mkfile(1))
    assert (ns.files, ns.blocks) == (12_500, 12_500)
    got: list[str] = []
    start_after = ""
    pages = 0
    while True:
        entries, more = ns.listdir("/big", start_after, 1000)
        got += [n for n, _ in entries]
        pages += 1
        if not more:
            break
        start_after = entries[-1][0]
    assert got == names and pages == 25
    # A page that ends exactly at the last entry says there is no more.
    entries, more = ns.listdir("/big", names[-1001], 1000)
    assert len(entries) == 1000 and not more
    # start_after need not be an existing name.
    entries, more = ns.listdir("/big", "e012345x", 2)
    assert [n for n, _ in entries] == ["e012346", "e012347"] and more
    entries, more = ns.listdir("/big", "zzz", 10)
    assert entries == [] and not more
    entries, more = ns.listdir("/big", "", 30_000)
    assert len(entries) == 25_000 and not more


def test_listdir_sees_changes_after_caching_names() -> None:
    ns = Namespace()
    ns.mkdir("/d/b", True, 1.0)
    assert [n for n, _ in ns.listdir("/d")[0]] == ["b"]
    ns.mkdir("/d/a", False, 1.0)
    ns.publish("/d/c", mkfile())
    assert [n for n, _ in ns.listdir("/d")[0]] == ["a", "b", "c"]
    ns.remove("/d/b", False, 1.0)
    ns.rename("/d/c", "/d/0", 1.0)
    assert [n for n, _ in ns.listdir("/d")[0]] == ["0", "a"]


def test_listdir_of_a_file_and_errors() -> None:
    ns = build()
    entries, more = ns.listdir("/d/a")
    assert [n for n, _ in entries] == ["a"] and not more
    with pytest.raises(NotFound):
        ns.listdir("/nope")
    with pytest.raises(NotADirectory):
        ns.listdir("/f/x")
    assert ns.listdir("/empty") == ([], False)


# -- counters through a long mixed sequence -------------------------------------------------

def test_counters_through_a_mixed_sequence() -> None:
    ns = Namespace()
    ns.publish("/a/1", mkfile(1))
    ns.publish("/a/2", mkfile(2))
    ns.publish("/a/2", mkfile(5))  # replace
    ns.publish("/b/3", mkfile(3))
    ns.rename("/a/1", "/b/3", 1.0)  # replaces /b/3
    ns.rename("/a", "/b", 1.0)  # /b/a
    ns.mkdir("/c/d/e", True, 1.0)
    ns.publish("/c/d/e/f", mkfile(4))
    ns.remove("/b/a", True, 1.0)
    check_counters(ns)
    assert (ns.files, ns.blocks) == (2, 5)
    ns.remove("/c", True, 1.0)
    ns.remove("/b", True, 1.0)
    assert (ns.files, ns.blocks) == (0, 0)
    assert ns.root.children == {}

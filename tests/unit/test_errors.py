"""dfs.errors: the one table between wire error codes and exception classes."""

from __future__ import annotations

import pytest

import dfs
from dfs import errors
from dfs.errors import (
    ERROR_CODES,
    DFSError,
    InternalError,
    NotFound,
    ProtocolViolation,
    from_wire,
)

# The documented table (docs/PROTOCOL.md): code -> (class, the words str() starts with).
TABLE = {
    "not_found": (errors.NotFound, "not found"),
    "exists": (errors.AlreadyExists, "already exists"),
    "not_a_directory": (errors.NotADirectory, "not a directory"),
    "is_a_directory": (errors.IsADirectory, "is a directory"),
    "not_empty": (errors.DirectoryNotEmpty, "directory not empty"),
    "no_space": (errors.NoSpace, "no space"),
    "unavailable": (errors.Unavailable, "unavailable"),
    "checksum": (errors.ChecksumError, "checksum mismatch"),
    "bad_request": (errors.BadRequest, "bad request"),
    "unauthorized": (errors.Unauthorized, "unauthorized"),
    "too_large": (errors.TooLarge, "too large"),
    "version": (errors.VersionMismatch, "protocol version mismatch"),
    "stale": (errors.StaleGeneration, "stale replica"),
    "timeout": (errors.Timeout, "timed out"),
    "not_leader": (errors.NotLeader, "not the active meta"),
    "internal": (errors.InternalError, "internal error"),
}


def test_the_table_is_complete_and_has_no_extras() -> None:
    assert set(ERROR_CODES) == set(TABLE)
    assert len(ERROR_CODES) == len(set(ERROR_CODES))


@pytest.mark.parametrize("code", sorted(TABLE))
def test_code_maps_to_its_class_and_back(code: str) -> None:
    cls, words = TABLE[code]
    assert cls.code == code and issubclass(cls, DFSError)
    err = from_wire({"id": 3, "err": code, "msg": "/a/b"})
    assert type(err) is cls
    assert err.msg == "/a/b"
    assert err.to_wire() == {"err": code, "msg": "/a/b"}
    again = from_wire(err.to_wire())
    assert type(again) is cls and again.msg == err.msg
    assert str(err) == f"{words}: /a/b"
    assert str(err).startswith(words)


@pytest.mark.parametrize("code", sorted(TABLE))
def test_default_message_is_the_words(code: str) -> None:
    cls, words = TABLE[code]
    assert str(cls()) == words
    assert cls().to_wire() == {"err": code, "msg": words}
    assert str(from_wire({"err": code})) == words


@pytest.mark.parametrize("code", sorted(TABLE))
def test_public_names_are_exported_from_dfs(code: str) -> None:
    cls, _ = TABLE[code]
    assert getattr(dfs, cls.__name__) is cls
    assert isinstance(cls(), dfs.DFSError)


def test_message_that_already_starts_with_the_words_is_not_repeated() -> None:
    assert str(NotFound("not found: /x")) == "not found: /x"
    assert str(NotFound("no such file or directory: /x")) == \
        "not found: no such file or directory: /x"


def test_details_round_trip() -> None:
    err = errors.Unavailable("pipeline broke", bad="127.0.0.1:6002")
    wire = err.to_wire()
    assert wire == {"err": "unavailable", "msg": "pipeline broke", "bad": "127.0.0.1:6002"}
    back = from_wire({"id": 9, "op": "packet", **wire})
    assert type(back) is errors.Unavailable
    assert back.details == {"bad": "127.0.0.1:6002"}  # id and op are not details


@pytest.mark.parametrize("header", [
    {"err": "no_such_code", "msg": "boom"},
    {"err": "", "msg": "boom"},
    {"err": 17, "msg": "boom"},
    {"err": None, "msg": "boom"},
    {"err": ["not_found"], "msg": "boom"},
], ids=["unknown", "empty", "int", "nil", "list"])
def test_unknown_codes_map_to_internal_error(header) -> None:
    err = from_wire(header)
    assert type(err) is InternalError
    assert "unknown error code" in err.msg and "boom" in err.msg
    assert str(err).startswith("internal error")


def test_non_string_message_is_replaced_by_the_words() -> None:
    err = from_wire({"err": "not_found", "msg": 42})
    assert type(err) is NotFound and str(err) == "not found"


def test_base_class_is_internal_on_the_wire() -> None:
    err = DFSError("handler crashed")
    assert err.to_wire() == {"err": "internal", "msg": "handler crashed"}
    assert type(from_wire(err.to_wire())) is InternalError


def test_protocol_violation_is_not_a_dfs_error() -> None:
    exc = ProtocolViolation("bad bytes")
    assert not isinstance(exc, DFSError)
    assert exc.code == "bad_request"
    assert ProtocolViolation("big", "too_large").code == "too_large"
    assert ProtocolViolation("big", "too_large").code in ERROR_CODES

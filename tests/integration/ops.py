"""The ops each server answers after hello, written out (docs/PROTOCOL.md section 11), for the
fuzzers. Never derived from the implementation's handler names: a renamed or dropped op must
fail a test (test_fuzz.py::test_every_listed_op_is_answered_by_a_real_server), not quietly
shrink what the fuzzers send. `hello` and `auth` come before these and are fuzzed apart."""

META_OPS = sorted([
    "register", "heartbeat", "block_report", "create", "add_block", "recover_block", "renew",
    "commit", "abort", "stat", "ls", "mkdir", "rm", "mv", "report_bad", "decommission", "fsck",
    "status", "cp", "setrep", "touch", "du", "chattr", "symlink", "poll_commands", "commit_part",
])
CHUNK_OPS = sorted([
    "write_block", "write_small", "abort_block", "packet", "read_block", "block_info",
    "block_crcs",
])

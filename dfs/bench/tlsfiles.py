"""A throwaway certificate authority for `dfs-bench --tls`, made with the openssl command line
(a quicker cousin of the test CA in docs/SECURITY.md: no certificate extensions, keys
unencrypted). Never for production keys."""

from __future__ import annotations

import os
import subprocess


def make_test_ca(directory: str) -> tuple[str, str, str]:
    """(cert, key, ca) PEM paths: a CA and one node certificate it signed, for 127.0.0.1."""
    os.makedirs(directory, exist_ok=True)

    def path(name: str) -> str:
        return os.path.join(directory, name)

    def run(*args: str) -> None:
        try:
            subprocess.run(["openssl", *args], check=True, capture_output=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            raise RuntimeError(f"openssl failed making a test CA: {exc}") from None

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec, "-keyout", path("ca.key"), "-out", path("ca.pem"), "-days", "2",
        "-subj", "/CN=dfs-bench test CA")
    run("req", *ec, "-keyout", path("node.key"), "-out", path("node.csr"),
        "-subj", "/CN=dfs-bench node")
    with open(path("ext.cnf"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                "extendedKeyUsage=serverAuth,clientAuth\n")
    run("x509", "-req", "-in", path("node.csr"), "-CA", path("ca.pem"), "-CAkey", path("ca.key"),
        "-CAcreateserial", "-out", path("node.pem"), "-days", "2", "-extfile", path("ext.cnf"))
    return path("node.pem"), path("node.key"), path("ca.pem")

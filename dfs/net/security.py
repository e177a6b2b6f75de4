"""Cluster security: the shared secret, the hello challenge-response, block tokens and TLS.

One `Security` per process role (or per client object) carries what that end knows:

- the cluster secret (`--secret-file` / `$DFS_SECRET_FILE`): every connection proves at hello
  that both ends know it, by HMAC-SHA256 over two fresh nonces, one from each side; the secret
  itself never crosses the wire (see docs/SECURITY.md for the exchange);
- block tokens: meta signs (block id, generation, mode, expiry) with a key derived from the
  secret and hands the token out with block locations; chunkservers check it on every request
  that names a block (HDFS block access tokens, SeaweedFS's master-signed JWTs);
- TLS contexts (`--tls-cert/--tls-key/--tls-ca`): every connection encrypted, both ends
  presenting a certificate signed by the cluster's CA.

Without a secret there is no authentication and no tokens, exactly as before; without TLS
options, plain TCP. Nothing here does network I/O.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import ssl
import time
from typing import Any

from ..errors import Unauthorized

NONCE_BYTES = 16
MIN_SECRET_BYTES = 16
TOKEN_LIFETIME = 600.0  # seconds a block token stays valid
TOKEN_SKEW = 60.0  # clocks of meta and chunkservers may differ this much
_MAC_BYTES = 16  # block token MACs are truncated HMAC-SHA256 (128 bits)


class SecurityError(Exception):
    """A secret or TLS file cannot be used: the daemon or CLI reports it in one line."""


def read_secret(path: str) -> bytes:
    """The secret in a file: its bytes with surrounding whitespace removed, at least 16."""
    try:
        with open(path, "rb") as f:
            secret = f.read().strip()
    except OSError as exc:
        raise SecurityError(f"cannot read secret file {path}: {exc.strerror or exc}") from None
    if len(secret) < MIN_SECRET_BYTES:
        raise SecurityError(f"secret file {path} holds {len(secret)} bytes; at least "
                            f"{MIN_SECRET_BYTES} are needed (e.g. `head -c 32 /dev/urandom "
                            f"| base64 > {path}`)")
    return secret


def _mac(key: bytes, *parts: bytes) -> bytes:
    return hmac.new(key, b"\0".join(parts), hashlib.sha256).digest()


class Security:
    def __init__(self, secret: bytes | None = None, *, tls_cert: str | None = None,
                 tls_key: str | None = None, tls_ca: str | None = None,
                 token_lifetime: float = TOKEN_LIFETIME) -> None:
        self.secret = secret
        self.token_lifetime = token_lifetime
        self._token_key = _mac(secret, b"dfs block token key") if secret else b""
        self.tls = bool(tls_cert or tls_key or tls_ca)
        self.server_ssl: ssl.SSLContext | None = None
        self.client_ssl: ssl.SSLContext | None = None
        if self.tls:
            self.server_ssl, self.client_ssl = _tls_contexts(tls_cert, tls_key, tls_ca)

    @classmethod
    def from_options(cls, secret_file: str | None = None, tls_cert: str | None = None,
                     tls_key: str | None = None, tls_ca: str | None = None,
                     token_lifetime: float = TOKEN_LIFETIME) -> "Security":
        """From command-line style options; the secret file falls back to $DFS_SECRET_FILE."""
        path = secret_file or os.environ.get("DFS_SECRET_FILE") or None
        return cls(read_secret(path) if path else None, tls_cert=tls_cert, tls_key=tls_key,
                   tls_ca=tls_ca, token_lifetime=token_lifetime)

    @property
    def authenticating(self) -> bool:
        return self.secret is not None

    # hello ------------------------------------------------------------------------------
    @staticmethod
    def nonce() -> bytes:
        return secrets.token_bytes(NONCE_BYTES)

    def server_proof(self, client_nonce: bytes, server_nonce: bytes) -> bytes:
        assert self.secret is not None
        return _mac(self.secret, b"dfs hello server", client_nonce, server_nonce)

    def client_proof(self, client_nonce: bytes, server_nonce: bytes) -> bytes:
        assert self.secret is not None
        return _mac(self.secret, b"dfs hello client", client_nonce, server_nonce)

    def check_client(self, proof: Any, client_nonce: bytes, server_nonce: bytes) -> None:
        if not isinstance(proof, bytes) or \
                not hmac.compare_digest(proof, self.client_proof(client_nonce, server_nonce)):
            raise Unauthorized("wrong cluster secret")

    # block tokens -----------------------------------------------------------------------
    def issue(self, block_id: int, gen: int, mode: str) -> list[Any] | None:
        """A token for one block: [expiry (unix seconds), mac]; None without a secret.
        mode "r" lets the bearer read that generation, "w" write (or abort) it."""
        if self.secret is None:
            return None
        expiry = int(time.time() + self.token_lifetime)
        return [expiry, self._token_mac(block_id, gen, mode, expiry)]

    def check(self, token: Any, block_id: int, gen: int, mode: str) -> None:
        """Raise Unauthorized unless `token` was issued by meta for exactly this block,
        generation and mode, and has not expired (beyond the allowed clock skew)."""
        if self.secret is None:
            return
        if not (isinstance(token, list) and len(token) == 2 and isinstance(token[0], int)
                and isinstance(token[1], bytes)):
            raise Unauthorized(f"block {block_id}: a valid block token is required", token=True)
        expiry, mac = token
        if not hmac.compare_digest(mac, self._token_mac(block_id, gen, mode, expiry)):
            raise Unauthorized(f"block {block_id}: block token does not match "
                               f"(gen {gen}, mode {mode})", token=True)
        if time.time() > expiry + TOKEN_SKEW:
            raise Unauthorized(f"block {block_id}: block token expired", token=True)

    def _token_mac(self, block_id: int, gen: int, mode: str, expiry: int) -> bytes:
        text = f"{block_id}:{gen}:{mode}:{expiry}".encode()
        return _mac(self._token_key, text)[:_MAC_BYTES]


NO_SECURITY = Security()


def _tls_contexts(cert: str | None, key: str | None,
                  ca: str | None) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """Mutual TLS: each end presents `cert` and accepts only peers whose certificate the CA
    signed. Names are not checked (peers are addressed by IP and port and the CA is the
    cluster's own), so every certificate the CA signs is a member of the cluster."""
    if not (cert and key and ca):
        raise SecurityError("TLS needs all three of --tls-cert, --tls-key and --tls-ca")
    try:
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        for ctx in (server, client):
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_cert_chain(cert, key)
            ctx.load_verify_locations(ca)
            ctx.verify_mode = ssl.CERT_REQUIRED
        client.check_hostname = False
    except (OSError, ssl.SSLError) as exc:
        raise SecurityError(f"cannot load TLS files ({cert}, {key}, {ca}): {exc}") from None
    return server, client

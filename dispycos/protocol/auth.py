# -*- test-case-name: tests.unit.test_protocol -*-
"""
Shared-secret challenge-response (HMAC-SHA256 over fresh nonces), bound to
the connection it runs on.

The connector sends its nonce; the listener answers with its own nonce and a
proof; the connector checks it and proves itself in turn. Neither side learns
anything that lets it forge the other's proof, and the secret never travels.
Both proofs cover the protocol version, the roles, the computation, the
locations both sides announce and the connection's channel binding (the TLS
session's exporter value, RFC 9266 C{tls-exporter}): a proof made on one TLS
session is worth nothing on another, so an attacker in the middle, who must
run two sessions, cannot relay one.

Keys come from secrets through scrypt (salted with what the key is for), so
a proof overheard is no cheap way to guess the secret; nodes and clients of
a shared scheduler use keys of different uses (L{NODE}, L{CLIENT}).
"""

import functools
import hashlib
import hmac
import os

NONCE_BYTES = 32
#: What a key is for: proving a node's secret (schedulers ⇄ nodes, node discovery) ...
NODE = "node"
#: ... or the secret a shared scheduler's clients know (clients ⇄ shared scheduler, finding it).
CLIENT = "client"
#: scrypt's cost (2**14: ~50 ms and 16 MiB per key; a process derives each key once).
SCRYPT_N = 2**14


@functools.lru_cache(maxsize=64)
def key_from_secret(secret, use=NODE):
    """The HMAC key of C{secret} (str or bytes; empty is allowed) for links of kind C{use}."""
    if isinstance(secret, str):
        secret = secret.encode("utf-8")
    # The standard library's scrypt (OpenSSL's): importing cryptography here would cost
    # every node and server process ~10 MiB and tens of milliseconds at start.
    return hashlib.scrypt(secret or b"", salt=b"dispycos-2:" + use.encode("ascii"), n=SCRYPT_N, r=8, p=1,
                          maxmem=64 * 1024 * 1024, dklen=32)


def new_nonce():
    """A fresh random nonce."""
    return os.urandom(NONCE_BYTES)


def context(version, computation, connector_location, listener_location, binding):
    """What both proofs of a handshake cover besides the nonces and the role."""
    fields = [str(version), computation, connector_location, listener_location]
    return "\n".join(fields).encode("utf-8") + b"\n" + binding


def listener_proof(key, connector_nonce, listener_nonce, role, bound=b""):
    """The proof the listening side sends in answer to C{Hello}."""
    msg = b"dispycos-s|" + connector_nonce + b"|" + listener_nonce + b"|" + role.encode() + b"|" + bound
    return hmac.new(key, msg, hashlib.sha256).digest()


def connector_proof(key, listener_nonce, connector_nonce, role, bound=b""):
    """The proof the connecting side sends with C{Authenticate}."""
    msg = b"dispycos-c|" + listener_nonce + b"|" + connector_nonce + b"|" + role.encode() + b"|" + bound
    return hmac.new(key, msg, hashlib.sha256).digest()


def check(expected, given):
    """Constant-time comparison."""
    return hmac.compare_digest(expected, given)

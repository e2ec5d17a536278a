# -*- test-case-name: tests.test_protocol -*-
"""
Shared-secret challenge-response (HMAC-SHA256 over fresh nonces).

The connector sends its nonce; the listener answers with its own nonce and a
proof; the connector checks it and proves itself in turn. Neither side learns
anything that lets it forge the other's proof, and the secret never travels.
"""

import hashlib
import hmac
import os

NONCE_BYTES = 32


def key_from_secret(secret):
    """The HMAC key for a secret (str or bytes; empty is allowed)."""
    if isinstance(secret, str):
        secret = secret.encode("utf-8")
    return hashlib.sha256(b"dispycos-key:" + (secret or b"")).digest()


def new_nonce():
    """A fresh random nonce."""
    return os.urandom(NONCE_BYTES)


def listener_proof(key, connector_nonce, listener_nonce, role):
    """The proof the listening side sends in answer to C{Hello}."""
    msg = b"dispycos-s|" + connector_nonce + b"|" + listener_nonce + b"|" + role.encode()
    return hmac.new(key, msg, hashlib.sha256).digest()


def connector_proof(key, listener_nonce, connector_nonce, role):
    """The proof the connecting side sends with C{Authenticate}."""
    msg = b"dispycos-c|" + listener_nonce + b"|" + connector_nonce + b"|" + role.encode()
    return hmac.new(key, msg, hashlib.sha256).digest()


def check(expected, given):
    """Constant-time comparison."""
    return hmac.compare_digest(expected, given)

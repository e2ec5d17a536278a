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

from twisted.internet import defer, interfaces, threads
from twisted.logger import Logger

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


class StretchedKey:
    """
    L{key_from_secret} of a secret, stretched in the reactor's thread pool
    once L{start}ed, so the reactor (and the process's start) need not wait
    the ~50 ms of scrypt: the node listens, starts its servers and announces
    itself ready meanwhile, and a handshake that comes first waits for
    L{wait}. Without a thread pool (a memory reactor) it is stretched at once.
    """

    log = Logger()

    def __init__(self, reactor, secret, use=NODE):
        self.reactor = reactor
        self._secret, self._use = secret, use
        self._key = None
        self._started = False
        self._failure = None
        self._waiting = []

    def start(self):
        """Begin stretching (once)."""
        if self._started:
            return
        self._started = True
        if not interfaces.IReactorThreads.providedBy(self.reactor):
            self.now()
            return
        d = threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), key_from_secret,
                                      self._secret, self._use)
        d.addCallbacks(self._got, self._failed)

    @property
    def value(self):
        """The key, or None while it is being stretched."""
        return self._key

    def now(self):
        """The key, stretched in this thread if it is not yet (for callers that cannot wait)."""
        if self._key is None:
            self._got(key_from_secret(self._secret, self._use))
        return self._key

    def wait(self):
        """A Deferred firing with the key (at once when it is there)."""
        if self._key is not None:
            return defer.succeed(self._key)
        if self._failure is not None:
            return defer.fail(self._failure)
        d = defer.Deferred()
        self._waiting.append(d)
        return d

    def _got(self, key):
        if self._key is not None:
            return None
        self._key, self._secret = key, None
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(key)
        return None

    def _failed(self, failure):
        if self._key is not None:
            return None
        self.log.failure("cannot stretch the secret", failure)
        self._failure = failure
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.errback(failure)
        return None


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

# -*- test-case-name: tests.test_discovery -*-
"""
UDP discovery: nodes announce themselves and answer probes; schedulers probe
for nodes and answer clients looking for a scheduler.

Packets are JSON with an HMAC-SHA256 tag (keyed by the shared secret), never
pickle; packets that fail the tag, are too large, too old or replayed (nonce
seen before) are dropped. Broadcasts go to the directed broadcast address of
the interface listened on (127.255.255.255 for loopback), never further.
"""

import hashlib
import hmac
import ipaddress
import json
import math
import os
import time
from collections import OrderedDict, deque

from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from dispycos import config
from dispycos.services import StartStopService
from dispycos.status import Location

MAGIC = b"DISPYCOS1\n"
TAG_BYTES = 32
#: Larger packets are dropped unread.
MAX_PACKET = 4096
#: Announcements older (or newer) than this many seconds are ignored.
MAX_AGE = 120
#: Packets kept (unread) while the key is not known yet: a node's is stretched
#: once its servers are up, and the probes that come meanwhile are answered then.
HELD_PACKETS = 32


def encode(key, msg):
    """A signed packet for C{msg} (a dict); adds a nonce and a timestamp."""
    msg = dict(msg, nonce=os.urandom(12).hex(), ts=time.time(), version=config.ProtocolVersion)
    body = json.dumps(msg, separators=(",", ":"), sort_keys=True).encode("utf-8")
    return MAGIC + body + hmac.new(key, MAGIC + body, hashlib.sha256).digest()


class ReplayGuard:
    """Remembers recent nonces (bounded) to drop replayed packets."""

    def __init__(self, size=4096):
        self.size = size
        self.seen = OrderedDict()

    def fresh(self, nonce):
        if nonce in self.seen:
            return False
        self.seen[nonce] = True
        while len(self.seen) > self.size:
            self.seen.popitem(last=False)
        return True


def decode(key, data, guard=None, now=None):
    """
    The message in C{data}, or None when it is not a valid, fresh packet for
    C{key}. Never raises on bad input.
    """
    if len(data) > MAX_PACKET or len(data) < len(MAGIC) + TAG_BYTES + 2 or not data.startswith(MAGIC):
        return None
    body, tag = data[len(MAGIC):-TAG_BYTES], data[-TAG_BYTES:]
    if not hmac.compare_digest(hmac.new(key, MAGIC + body, hashlib.sha256).digest(), tag):
        return None
    try:
        msg = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(msg, dict) or msg.get("version") != config.ProtocolVersion:
        return None
    ts, nonce = msg.get("ts"), msg.get("nonce")
    if not isinstance(ts, (int, float)) or not math.isfinite(ts) or not isinstance(nonce, str):
        return None
    now = time.time() if now is None else now
    if abs(now - ts) > MAX_AGE:
        return None
    if guard is not None and not guard.fresh(nonce):
        return None
    return msg


def broadcast_addresses(host):
    """Where broadcasts for an interface bound to C{host} go."""
    if host in ("", "0.0.0.0"):
        out = []
        try:
            import psutil

            for addrs in psutil.net_if_addrs().values():
                for a in addrs:
                    if getattr(a, "family", None) == 2 and a.broadcast:  # AF_INET
                        out.append(a.broadcast)
        except Exception:
            pass
        return sorted(set(out)) or ["127.255.255.255"]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return []
    if ip.is_loopback:
        return ["127.255.255.255"]
    try:
        import psutil

        for addrs in psutil.net_if_addrs().values():
            for a in addrs:
                if a.address == host and a.netmask:
                    net = ipaddress.ip_network("%s/%s" % (host, a.netmask), strict=False)
                    return [str(net.broadcast_address)]
    except Exception:
        pass
    return []


class _Socket(DatagramProtocol):
    def __init__(self, owner):
        self.owner = owner

    def startProtocol(self):
        self.transport.setBroadcastAllowed(True)

    def datagramReceived(self, data, addr):
        self.owner._received(data, addr)


class Discovery(StartStopService):
    """
    UDP sockets on C{port} for the interfaces in C{hosts}: bound to each
    address and to its broadcast address (so a loopback-only daemon listens on
    loopback only), or to all interfaces for C{""}.

    @param key: the key packets are signed with; None until it is known (a
        node's, being stretched): till then nothing is sent, and the first
        L{HELD_PACKETS} packets that come are kept and read once it is set.
    @param handler: called with C{(msg, (host, port))} for each valid packet.
    """

    log = Logger()

    def __init__(self, reactor, hosts, port, key, handler, client_key=None):
        self.reactor = reactor
        self.hosts = list(hosts) or ["127.0.0.1"]
        self.port = port
        self._held = deque()
        self._key = key
        #: A second key (a shared scheduler's clients' one): packets it verifies
        #: are handled with C{msg["client"] = True}, and answered with it.
        self.client_key = client_key
        self.handler = handler
        self.guard = ReplayGuard()
        self.ports = []
        self.dropped = 0

    @property
    def key(self):
        """The key packets are signed with (None: not known yet)."""
        return self._key

    @key.setter
    def key(self, key):
        self._key = key
        if key is not None:
            held, self._held = self._held, deque()
            for data, addr in held:
                self._received(data, addr)

    def start(self):
        binds = []
        for host in self.hosts:
            if host in ("", "0.0.0.0"):
                binds.append("")
            else:
                binds.append(host)
                binds.extend(broadcast_addresses(host))
        for addr in dict.fromkeys(binds):
            try:
                p = self.reactor.listenMulticast(self.port, _Socket(self), interface=addr, listenMultiple=True)
            except Exception as e:
                self.log.warn("discovery: cannot listen on {a}:{p}: {e}", a=addr or "*", p=self.port, e=e)
                continue
            self.ports.append(p)
        if self.port == 0 and self.ports:
            self.port = self.ports[0].getHost().port
        # Answers come to a port of our own: the well-known port is shared
        # (SO_REUSEPORT) and the kernel would hand unicast replies to any of
        # its listeners.
        unicast = self.hosts[0] if self.hosts[0] not in ("", "0.0.0.0") else ""
        try:
            self.reply = self.reactor.listenUDP(0, _Socket(self), interface=unicast)
            self.reply_port = self.reply.getHost().port
        except Exception as e:
            self.log.warn("discovery: no reply socket: {e}", e=e)
            self.reply, self.reply_port = None, self.port

    def stop(self):
        self._held.clear()
        ports, self.ports = self.ports, []
        if getattr(self, "reply", None) is not None:
            ports.append(self.reply)
            self.reply = None
        for p in ports:
            p.stopListening()

    def _received(self, data, addr):
        if self._key is None:  # not yet known (a node's, being stretched): read it once it is
            if len(self._held) < HELD_PACKETS and len(data) <= MAX_PACKET:
                self._held.append((data, addr))
            else:
                self.dropped += 1
            return
        msg = decode(self._key, data, self.guard)
        if msg is None and self.client_key is not None:
            msg = decode(self.client_key, data, self.guard)
            if msg is not None:
                msg["client"] = True
        if msg is None:
            self.dropped += 1
            return
        try:
            self.handler(msg, addr)
        except Exception:
            self.log.failure("discovery handler failed on {msg}", msg=msg)

    def send(self, msg, addr, client=False):
        """Send C{msg} to C{addr} (host, port), signed with the clients' key when C{client}."""
        sender = getattr(self, "reply", None) or (self.ports[0] if self.ports else None)
        key = self.client_key if client else self.key
        if sender is None or key is None:
            return
        try:
            sender.write(encode(key, msg), addr)
        except Exception as e:
            self.log.debug("discovery: cannot send to {a}: {e}", a=addr, e=e)

    def broadcast(self, msg, port):
        """Send C{msg} to the broadcast address of every interface listened on."""
        targets = []
        for host in self.hosts:
            targets.extend(broadcast_addresses(host))
        for b in dict.fromkeys(targets):
            self.send(msg, (b, port))


def find_scheduler(reactor, key, host="127.0.0.1", port=config.SchedulerPort, timeout=5.0):
    """
    Broadcast a probe for a shared scheduler (on the interface of C{host})
    and fire with the L{Location} of the first that answers, or None.
    """
    from twisted.internet import defer

    result = defer.Deferred()

    def answer(msg, addr):
        if msg.get("kind") == "scheduler" and isinstance(msg.get("port"), int) and not result.called:
            result.callback(Location(msg.get("host") or addr[0], msg["port"]))

    finder = Discovery(reactor, [host], 0, key, answer)
    finder.start()
    probe = {"kind": "find", "role": "client", "reply_port": finder.reply_port}
    finder.broadcast(probe, port)
    again = reactor.callLater(min(1.0, timeout / 2), finder.broadcast, probe, port)
    expire = reactor.callLater(timeout, lambda: result.called or result.callback(None))

    def done(r):
        for call in (again, expire):
            if call.active():
                call.cancel()
        finder.stop()
        return r

    return result.addBoth(done)

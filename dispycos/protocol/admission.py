# -*- test-case-name: tests.unit.test_protocol -*-
"""The admission limit on a listener's connections not yet authenticated (L{PendingConnections})."""

from dispycos import config


class PendingConnections:
    """
    A listener's connections that have not yet proven the secret: at most
    C{per_address} from one address and C{total} in all. A connection past
    a cap pushes out the oldest one it competes with, so connections left
    idle by an attacker cannot lock out a peer whose handshake takes
    milliseconds.
    """

    def __init__(self, per_address=None, total=None):
        self.per_address = config.MaxPendingPerAddress if per_address is None else per_address
        self.total = config.MaxPending if total is None else total
        self._all = {}  # connection -> address, oldest first
        self._by_address = {}  # address -> {connection: None}, oldest first

    def __len__(self):
        return len(self._all)

    def count(self, address):
        return len(self._by_address.get(address, ()))

    def add(self, conn, address):
        """Count C{conn}; return the C{(connection, why)} pairs to drop for it."""
        self._all[conn] = address
        mine = self._by_address.setdefault(address, {})
        mine[conn] = None
        victims = []
        if len(mine) > self.per_address:
            victims.append((next(iter(mine)), "over %d unauthenticated connections from its address" % self.per_address))
        elif len(self._all) > self.total:
            victims.append((next(iter(self._all)), "over %d unauthenticated connections in all" % self.total))
        for victim, _ in victims:
            self.remove(victim)
        return victims

    def remove(self, conn):
        address = self._all.pop(conn, None)
        mine = self._by_address.get(address)
        if mine is not None:
            mine.pop(conn, None)
            if not mine:
                del self._by_address[address]


def pending_for(factory):
    """The L{PendingConnections} of the listener whose protocols C{factory} makes (made on first use)."""
    pending = factory.__dict__.get("dispycos_pending")
    if pending is None:
        pending = factory.dispycos_pending = PendingConnections()
    return pending

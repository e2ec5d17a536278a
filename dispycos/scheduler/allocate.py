# -*- test-case-name: tests.test_allocate -*-
"""
L{DispycosNodeAllocate}: which nodes a computation uses, and how many of
their servers.
"""

import re
import socket


class DispycosNodeAllocate:
    """
    An allocation rule for nodes.

    @param node: a node's name, its exact IP address, an IP pattern in
        which C{*} matches any run of characters and every other character is
        literal (C{"192.168.1.*"} takes 192.168.1.10, never 192.168.10.5), or
        a compiled regular expression (C{re.Pattern}); patterns must match the
        whole address.
    @param platform: a regular expression searched (ignoring case) in the
        node's C{platform.platform()}; C{''} matches any.
    @param cpus: > 0: the node must have at least that many servers and
        that many are used; 0: all; < 0: all but that many.
    @param memory: minimum available memory in bytes (0: no constraint).
    @param disk: minimum available disk in bytes (0: no constraint).

    Subclasses may override L{allocate}; they work with private and shared
    schedulers alike (a shared scheduler asks the client).
    """

    def __init__(self, node, platform="", cpus=0, memory=0, disk=0):
        if isinstance(node, re.Pattern):
            self._ip_rex = node
        elif isinstance(node, str) and node:
            self._ip_rex = wildcard(node) if "*" in node else None
        else:
            raise TypeError("node must be a name, an IP address, an IP pattern with * or a compiled "
                            "regular expression, not %r" % (node,))
        self.node = node
        self.platform = platform or ""
        self.cpus = int(cpus or 0)
        self.memory = int(memory or 0)
        self.disk = int(disk or 0)
        self._ip = None
        if self._ip_rex is None:
            try:
                self._ip = socket.gethostbyname(node) if re.match(r"^[\w.-]+$", node) else None
            except OSError:
                self._ip = None

    def matches(self, ip_addr, name):
        """True when this allocation names the node (name, exact IP, or a pattern of the whole IP)."""
        if self._ip_rex is not None:
            return self._ip_rex.fullmatch(ip_addr) is not None
        return self.node in (ip_addr, name) or (self._ip is not None and self._ip == ip_addr)

    def allocate(self, ip_addr, name, platform, cpus, memory, disk):
        """
        The number of servers to use on a node: > 0 that many, 0 none, < 0
        "not mine: try the next allocation".
        """
        if not self.matches(ip_addr, name):
            return -1
        if self.platform and not re.search(self.platform, platform or "", re.IGNORECASE):
            return -1
        if self.memory and memory is not None and memory < self.memory:
            return 0
        if self.disk and disk is not None and disk < self.disk:
            return 0
        if self.cpus > 0:
            return self.cpus if cpus >= self.cpus else 0
        if self.cpus < 0:
            return max(cpus + self.cpus, 0)
        return cpus

    def __repr__(self):
        return "DispycosNodeAllocate(%r, platform=%r, cpus=%d, memory=%d, disk=%d)" % (
            self.node, self.platform, self.cpus, self.memory, self.disk)


def wildcard(pattern):
    """
    The regular expression of an IP pattern: C{*} matches any run of
    characters, every other character is literal.
    """
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.DOTALL)


def allocate_cpus(allocations, info):
    """
    Apply C{allocations} (a whitelist when not empty) to a node described by
    C{info} (a L{DispycosNodeInfo}): the number of servers to use.
    """
    if not allocations:
        return info.cpus
    avail = info.avail_info
    memory = avail.memory if avail is not None else None
    disk = avail.disk if avail is not None else None
    for alloc in allocations:
        n = alloc.allocate(info.addr, info.name, info.platform, info.cpus, memory, disk)
        if n is None or n < 0:
            continue
        return min(int(n), info.cpus)
    return 0

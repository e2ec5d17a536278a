"""
Hosts in network namespaces that a test makes for itself: C{count} hosts on
one switch (a bridge in a namespace of its own), addresses C{<net>.<i>/24},
no default route, nothing in the root namespace. Needs root and iproute2
(tests skip otherwise). Everything is removed on exit.
"""

import os
import shutil
import subprocess
import sys

import pytest


def sh(*args, check=True):
    return subprocess.run(list(args), capture_output=True, text=True, timeout=30, check=check)


class Hosts:
    """
    C{count} namespaced hosts on one switch.

    @ivar net: the first three octets of their /24 (host C{i} is C{net.i}).
    @ivar switch: the switch's namespace (where a sniffer sees every frame).
    """

    def __init__(self, tag, count=3):
        self.prefix = "%s%d" % (tag, os.getpid() % 100000)
        self.net = "10.%d.%d" % (70 + sum(map(ord, tag)) % 50, os.getpid() % 200 + 20)
        self.count = count
        self.switch = self.prefix + "-sw"

    def name(self, i):
        return "%s-h%d" % (self.prefix, i)

    def addr(self, i):
        return "%s.%d" % (self.net, i)

    def argv(self, i, *argv):
        """C{argv} run on host C{i}."""
        return ["ip", "netns", "exec", self.name(i)] + list(argv)

    def python(self, i, *args):
        """This Python on host C{i}, with C{args}."""
        return self.argv(i, sys.executable, *args)

    def __enter__(self):
        if os.geteuid() != 0 or shutil.which("ip") is None:
            pytest.skip("network namespaces need root and iproute2")
        try:
            sh("ip", "netns", "add", self.switch)
        except (subprocess.CalledProcessError, OSError) as e:
            pytest.skip("cannot create network namespaces here: %s" % (getattr(e, "stderr", "") or e))
        try:
            sw = self.switch
            sh("ip", "-n", sw, "link", "set", "lo", "up")
            sh("ip", "-n", sw, "link", "add", "br0", "type", "bridge")
            sh("ip", "-n", sw, "link", "set", "br0", "up")
            for i in range(1, self.count + 1):
                n = self.name(i)
                sh("ip", "netns", "add", n)
                sh("ip", "-n", n, "link", "set", "lo", "up")
                sh("ip", "link", "add", "veth0", "netns", n, "type", "veth", "peer", "name", "p%d" % i, "netns", sw)
                sh("ip", "-n", sw, "link", "set", "p%d" % i, "master", "br0")
                sh("ip", "-n", sw, "link", "set", "p%d" % i, "up")
                sh("ip", "-n", n, "addr", "add", "%s/24" % self.addr(i), "brd", "+", "dev", "veth0")
                sh("ip", "-n", n, "link", "set", "veth0", "up")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        for i in range(1, self.count + 1):
            sh("ip", "netns", "del", self.name(i), check=False)
        sh("ip", "netns", "del", self.switch, check=False)

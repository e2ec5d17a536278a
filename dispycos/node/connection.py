# -*- test-case-name: tests.test_core -*-
"""
L{NodeProtocol}: a scheduler's connection to a node (node information,
pulses, and what a computation's scheduler asks: prepare, reserve, enable
and close servers, release).
"""

import os
import platform

from dispycos import metrics
from dispycos.protocol import commands
from dispycos.protocol.streams import StreamingAMP


def avail_info(path=None):
    """The node's free resources, from psutil (None where unknown)."""
    try:
        import psutil

        return {
            "cpu": 100.0 - psutil.cpu_percent(),
            "memory": psutil.virtual_memory().available,
            "disk": psutil.disk_usage(path if path and os.path.isdir(path) else os.getcwd()).free,
            "swap": psutil.swap_memory().free,
        }
    except Exception:
        return {"cpu": None, "memory": None, "disk": None, "swap": None}


class NodeProtocol(metrics.CountedConnection, StreamingAMP):
    """A scheduler's connection to this node (it may also send files for the node directory)."""

    def __init__(self, node):
        super().__init__(node.reactor, lambda dest, computation: node.stream_root(self, dest, computation),
                         node.max_file_size, keyring=node.keyring, location="")
        self.node = node
        self.counts = node.counts
        self.pulse_interval = None

    def connectionLost(self, reason):
        super().connectionLost(reason)
        self.node.scheduler_lost(self)

    @commands.NodeInfo.responder
    def _info(self):
        node = self.node
        return {
            "name": node.name,
            "cpus": len(node.slots),
            "platform": platform.platform(),
            "avail": avail_info(node.dest_path),
            "busy": node.active is not None and node.active.proto is not self,
        }

    @commands.Pulse.responder
    def _pulse(self, interval):
        node = self.node
        if node.active is not None and node.active.proto is self:
            node.scheduler_watch.heard()
        self.pulse_interval = min(max(interval, node.min_pulse_interval), node.max_pulse_interval)
        return {"avail": avail_info(node.dest_path)}

    @commands.Prepare.responder
    def _prepare(self, computation, files):
        self.node.prepare(self, computation, files)
        return {}

    @commands.Reserve.responder
    def _reserve(self, computation, key, cpus, components, client, node_setup=None, server_setup=None,
                 setup_args=None, disable_servers=False):
        setup = {"node_setup": node_setup, "server_setup": server_setup, "setup_args": setup_args,
                 "disable_servers": bool(disable_servers)}
        return self.node.reserve(self, computation, key, cpus, components, client, setup)

    @commands.EnableServer.responder
    def _enable_server(self, computation, index, args):
        return self.node.enable_server(computation, index, args).addCallback(lambda _: {})

    @commands.CloseServer.responder
    def _close_server(self, computation, index, terminate, restart):
        return self.node.close_server(computation, index, terminate, restart).addCallback(lambda _: {})

    @commands.Release.responder
    def _release(self, computation, terminate):
        return self.node.release(computation, terminate).addCallback(lambda _: {})

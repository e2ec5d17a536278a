# -*- test-case-name: tests.test_core -*-
"""
Control of a computation's nodes and servers, files sent to them, and what runs where (L{ClusterControl}, a part of L{dispycos.client.computation.Computation}).
"""

import os

from twisted.internet import defer

from dispycos import serialize
from dispycos.errors import ComputationClosed, NoServerError, PicklingError
from dispycos.protocol.streams import send_file
from dispycos.status import Location


class ClusterControl:
    """
    A computation's hold on its nodes and servers: enable, suspend, resume,
    close and restart them, send them files, list them and their tasks.
    """

    def _control(self, action, target, args=None, terminate=False, restart=False):
        if not self._active or self._closed:
            return defer.fail(ComputationClosed("computation is not scheduled"))
        blob = None
        if args:
            serialize.register_types_of(args)
            try:
                blob = serialize.dumps(tuple(args), "arguments of %s" % action)
            except PicklingError as e:
                return defer.fail(e)
        if isinstance(target, Location):
            target = str(target)
        return self._scheduler.control(self._events, action, str(target), blob, terminate, restart)

    def enable_node(self, ip, *setup_args):
        """Set up a held node (C{disable_nodes}) with C{node_setup(*setup_args)}, or resume it."""
        return self._control("enable_node", ip, setup_args)

    def enable_server(self, location, *setup_args):
        """Set up a held server (C{disable_servers}) with C{server_setup(*setup_args)}, or resume it."""
        return self._control("enable_server", location, setup_args)

    def suspend_node(self, ip):
        """Place no new tasks on node C{ip} (running ones go on)."""
        return self._control("suspend_node", ip)

    def resume_node(self, ip):
        """Place tasks on node C{ip} again."""
        return self._control("resume_node", ip)

    def suspend_server(self, location):
        """Place no new tasks on server C{location}."""
        return self._control("suspend_server", location)

    def resume_server(self, location):
        """Place tasks on server C{location} again."""
        return self._control("resume_server", location)

    def close_server(self, location, terminate=False, restart=False):
        """
        Close server C{location} once its tasks end (terminate them when
        C{terminate}); with C{restart} a fresh server process takes its place.
        """
        return self._control("close_server", location, terminate=terminate, restart=restart)

    def restart_server(self, location, terminate=False):
        """C{close_server(location, terminate, restart=True)}."""
        return self.close_server(location, terminate, restart=True)

    def close_node(self, ip, terminate=False):
        """Release node C{ip} from this computation (its servers close)."""
        return self._control("close_node", ip, terminate=terminate)

    @defer.inlineCallbacks
    def send_file(self, where, path, dir=None, overwrite=False):
        """
        Send the file at C{path} to a node (C{where}: its IP address; the file
        lands in the node directory, C{..} of every server) or to a server
        (C{where}: its L{Location}; the file lands in its directory), in
        sub-directory C{dir}. Fires with the absolute path where it landed.
        """
        if not self._active or self._closed:
            raise ComputationClosed("computation is not scheduled")
        if not os.path.isfile(path):
            raise ValueError("%r is not a file" % (path,))
        servers = yield self.servers()
        if isinstance(where, Location):
            if where not in servers:
                raise NoServerError("no server %s in this computation" % (where,))
            target, dest = where, "server"
        else:
            at = [s for s in servers if s.addr == str(where)]
            if not at:
                # A node held for enable_node has no servers yet: a private
                # scheduler sends the file over its own link to that node.
                proto = self._held_node_link(str(where))
                if proto is None:
                    raise NoServerError("no node %s in this computation" % (where,))
                landed = yield send_file(proto, path, "node", subdir=dir or "", overwrite=overwrite,
                                         computation=self.id)
                return landed
            target, dest = at[0], "node"
        proto = yield self.runtime.connection(target)
        landed = yield send_file(proto, path, dest, subdir=dir or "", overwrite=overwrite, computation=self.id)
        return landed

    def _held_node_link(self, where):
        return self._scheduler.held_node_link(self._events, where)

    def nodes(self):
        """Deferred firing with the addresses of the nodes in use."""
        if not self._active:
            return defer.succeed([])
        return self._scheduler.nodes_of(self._events)

    def servers(self):
        """Deferred firing with the L{Location}s of the servers in use."""
        if not self._active:
            return defer.succeed([])
        return self._scheduler.servers_of(self._events)

    def tasks(self, where=None):
        """
        Deferred firing with the L{RemoteTask}s of this computation still
        running: all of them, or those on node C{where} (its IP address or
        name) or on server C{where} (a L{Location}).
        """
        running = [t for t in self._tasks.values() if t.outcome is None]
        if where is None:
            return defer.succeed(running)
        if isinstance(where, Location):
            return defer.succeed([t for t in running if t.location == where])
        where = str(where)
        return defer.succeed([t for t in running
                              if where in (t.location.addr, getattr(t._entry, "node_addr", None),
                                           getattr(t._entry, "node_name", None))])

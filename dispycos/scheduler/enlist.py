# -*- test-case-name: tests.test_core -*-
"""
Nodes taken into a computation and servers leaving it (L{Enlisting}, a part of L{dispycos.scheduler.core.Scheduler}).
"""

import copy
import os

from twisted.internet import defer

from dispycos.errors import ConnectionLostError, FileTransferError, SetupError
from dispycos.protocol import commands
from dispycos.protocol.streams import send_file
from dispycos.scheduler.links import ServerEntry
from dispycos.status import DispycosStatus, Location, Status


class Enlisting:
    """
    How L{Scheduler} takes a node into a computation: reserve it, send the
    computation's code and files, run its node setup, then add its servers;
    and how servers leave.
    """

    @defer.inlineCallbacks
    def _reserve(self, link, comp):
        if (link.computation is comp or link.proto is None or comp is not self.active
                or link.ignored_by is comp):
            return
        link.computation = comp
        link._start_pulses(now=True)  # at the computation's pulse interval
        try:
            cpus = yield defer.maybeDeferred(comp.allocate, link.info)
        except Exception as e:
            self.log.warn("allocation for node {loc} failed: {e}", loc=link.location, e=e)
            cpus = 0
        if comp is not self.active or link.computation is not comp:
            return
        if cpus <= 0:
            self.log.info("node {loc} not used by computation {c} (allocation)", loc=link.location, c=comp.id)
            link.computation = None
            link.ignored_by = comp
            self._check_refusals(comp)
            return
        try:
            yield self._prepare(link, comp)
        except (SetupError, FileTransferError) as e:
            if comp is self.active:
                self._node_failed(link, comp, e)
            return
        except Exception as e:
            self._declined(link, comp, e)
            return
        if comp is not self.active or link.computation is not comp:
            return
        link.declined = None
        if comp.disable_nodes:
            link.held = (comp, cpus)  # until enable_node(ip, *args), which the status may call
            comp.status(Status.NodeDiscovered, link.info)
            return
        comp.status(Status.NodeDiscovered, link.info)
        yield self._setup_node(link, comp, cpus, None)

    def _declined(self, link, comp, exc):
        """The node would not take C{comp} for now (busy, outside its window): ask again, say why."""
        if link.computation is comp:
            link.computation = None
        link.declined = str(exc)
        if comp is self.active and link.proto is not None:
            self.log.warn("node {loc} could not take the computation: {e}", loc=link.location, e=exc)
            self.reactor.callLater(2, self._reserve, link, comp)

    @defer.inlineCallbacks
    def _prepare(self, link, comp):
        """Hold the node for C{comp} and stream its component files into the node directory."""
        files = [(name, path, os.path.getsize(path)) for name, path in comp.files]
        yield link.call(commands.Prepare, computation=comp.id, files=[[name, size] for name, _, size in files])
        for name, path, _ in files:
            subdir, base = os.path.split(name)
            if link.proto is None:
                raise ConnectionLostError("node %s is gone" % (link.location,))
            yield send_file(link.proto, path, "node", subdir=subdir, overwrite=True, computation=comp.id, name=base)

    @defer.inlineCallbacks
    def _setup_node(self, link, comp, cpus, setup_args):
        link.held = None
        node_setup, server_setup = comp.setup_names()
        try:
            r = yield link.call(
                commands.Reserve, computation=comp.id, key=comp.key, cpus=cpus,
                components=comp.components,
                client=str(self.runtime.location), node_setup=node_setup, server_setup=server_setup,
                setup_args=setup_args, disable_servers=bool(comp.disable_servers),
            )
        except SetupError as e:
            if comp is self.active:
                comp.status_message(DispycosStatus(Status.NodeClosed, link.info, exception=e))
                self._node_failed(link, comp, e)
            return
        except Exception as e:
            self._declined(link, comp, e)
            return
        if comp is not self.active or link.computation is not comp:
            return
        info = copy.copy(link.info)
        info.cpus = len(r["servers"])
        comp.status(Status.NodeInitialized, info)
        self._add_servers(link, comp, [(s["index"], Location.parse(s["location"], 0), s.get("ready", True), s.get("error"))
                                       for s in r["servers"]])

    def _add_servers(self, link, comp, servers):
        """
        Book C{(index, location, ready, error)} servers of C{link}'s node; a
        held server (disable_servers) waits for enable_server, a failed
        server_setup is reported closed.
        """
        # Book every server first: user code may run as soon as the
        # computation hears of one.
        entries = []
        for index, location, ready, failure in servers:
            entry = ServerEntry(link, index, location)
            entry.ready = bool(ready)
            entries.append((entry, failure))
            if failure:
                continue
            old = link.servers.get(index)
            if old is not None and old in self.servers:
                self.servers.remove(old)
            link.servers[index] = entry
            self.servers.append(entry)
            self.runtime.computation_of[location] = comp.id
        for entry, failure in entries:
            if not failure and self.private:
                # Connect now, so the first tasks do not wait for the handshake (a
                # shared scheduler's clients connect themselves, with their own TLS).
                self.runtime.connection(entry.location).addErrback(lambda f: None)
            comp.status(Status.ServerDiscovered, entry.location)
            if failure:
                comp.status_message(DispycosStatus(Status.ServerClosed, entry.location, exception=SetupError(failure)))
            elif entry.ready:
                comp.status(Status.ServerInitialized, entry.location)
        if any(e.ready for e, failure in entries if not failure):
            comp.server_ready()
        self._dispatch()

    def _forget_server(self, entry, status):
        if entry in self.servers:
            self.servers.remove(entry)
        entry.ready = False
        if self.active is not None:
            self.active.status(status, entry.location)

    def _remove_server(self, entry, status, why):
        self._forget_server(entry, status)
        self.runtime._abandon_at(entry.location, why)

    def _server_event(self, link, computation, index, event, location):
        comp = self.active
        if comp is None or comp.id != computation or link.computation is not comp:
            return
        if event == "died":
            entry = link.servers.pop(index, None)
            if entry is not None:
                self._remove_server(entry, Status.ServerDisconnected, "server %s died" % (entry.location,))
        elif event == "initialized":
            self._add_servers(link, comp, [(index, Location.parse(location, 0), True, None)])
        elif event == "closed":
            # Closed in order: its tasks' outcomes reach their clients before
            # its connections close (which abandons whatever is left).
            entry = link.servers.pop(index, None)
            if entry is not None:
                self._forget_server(entry, Status.ServerClosed)
        elif event == "node_closed":
            entries = list(link.servers.values())
            link.servers.clear()
            link.computation = None
            link.ignored_by = comp
            for entry in entries:
                self._forget_server(entry, Status.ServerClosed)
            comp.status(Status.NodeClosed, link.info)
            self._fail_if_no_servers()

# -*- test-case-name: tests.test_core -*-
"""
Control of a computation's nodes and servers (L{Controlling}, a part of L{dispycos.scheduler.core.Scheduler}).
"""

from twisted.internet import defer

from dispycos.errors import ComputationClosed, DispycosError, NoServerError
from dispycos.protocol import commands
from dispycos.status import Location, Status


class Controlling:
    """
    What a computation may do to its nodes and servers (L{Scheduler.control}):
    enable, suspend, resume, close or restart them.
    """

    def held_node_link(self, comp, where):
        """The connection to node C{where}, held for C{comp} but without servers yet (or None)."""
        for link in self._links_at(comp, where):
            if link.proto is not None and link.proto.connected:
                return link.proto
        return None

    def _links_at(self, comp, where):
        where = str(where)
        return [l for l in self.links.values()
                if where in (l.location.addr, str(l.location), l.info.name if l.info else None)
                and (l.computation is comp or (l.held and l.held[0] is comp))]

    def _entry(self, comp, location):
        location = Location.parse(location, 0)
        for link in self.links.values():
            if link.computation is comp:
                for entry in link.servers.values():
                    if entry.location == location:
                        return entry
        raise NoServerError("no server %s in this computation" % (location,))

    @defer.inlineCallbacks
    def control(self, comp, action, target, args=None, terminate=False, restart=False):
        """
        C{enable_node}, C{enable_server}, C{suspend_node}, C{resume_node},
        C{suspend_server}, C{resume_server}, C{close_server}, C{close_node}
        of a computation; fires with None once applied.
        """
        if comp is not self.active:
            raise ComputationClosed("computation is not active")
        if action in ("enable_node", "suspend_node", "resume_node", "close_node"):
            links = self._links_at(comp, target)
            if not links:
                raise NoServerError("no node %s in this computation" % (target,))
            for link in links:
                if action == "enable_node":
                    if link.held is not None:
                        _, cpus = link.held
                        yield self._setup_node(link, comp, cpus, args)
                    elif link.suspended:
                        self._suspend_node(link, comp, False)
                elif action in ("suspend_node", "resume_node"):
                    self._suspend_node(link, comp, action == "suspend_node")
                else:
                    yield link.call(commands.Release, computation=comp.id, terminate=terminate)
                    self._server_event(link, comp.id, 0, "node_closed", "")
            self._dispatch()
            return
        entry = self._entry(comp, target)
        link = entry.node
        if action == "enable_server":
            if entry.ready:
                if entry.suspended:
                    self._suspend_server(entry, comp, False)
                return
            yield link.call(commands.EnableServer, computation=comp.id, index=entry.index, args=args)
            entry.ready = True
            comp.status(Status.ServerInitialized, entry.location)
            comp.server_ready()
        elif action in ("suspend_server", "resume_server"):
            self._suspend_server(entry, comp, action == "suspend_server")
        elif action == "close_server":
            yield link.call(commands.CloseServer, computation=comp.id, index=entry.index, terminate=terminate,
                            restart=restart)
        else:
            raise DispycosError("unknown action %r" % (action,))
        self._dispatch()

    def _suspend_node(self, link, comp, suspend):
        if link.suspended == suspend:
            return
        link.suspended = suspend
        comp.status(Status.NodeSuspended if suspend else Status.NodeResumed, link.info)

    def _suspend_server(self, entry, comp, suspend):
        if entry.suspended == suspend:
            return
        entry.suspended = suspend
        comp.status(Status.ServerSuspended if suspend else Status.ServerResumed, entry.location)
        link = entry.node
        others = [e for e in link.servers.values() if e.ready]
        if suspend and others and all(e.suspended for e in others):
            self._suspend_node(link, comp, True)
        elif not suspend and link.suspended:
            self._suspend_node(link, comp, False)

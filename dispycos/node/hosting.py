# -*- test-case-name: tests.test_core,tests.test_lifecycle -*-
"""
The computation a node hosts (L{Hosting}, a part of L{dispycos.node.service.NodeService}).
"""

import os

from attrs import Factory, define
from twisted.internet import defer

from dispycos import config, paths
from dispycos.errors import DispycosError, FileTransferError, SetupError
from dispycos.protocol import commands
from dispycos.protocol.receiving import safe_join


@define
class HostedComputation:
    """
    The computation a node hosts: held by C{proto} (its scheduler's
    connection) while the component C{files} (name -> size) arrive, then
    reserved with its C{client}, C{key} and C{components}, its C{slots}
    (server index -> what its server answered), C{setup} and per-server
    C{server_args}, and the C{node_globals} its node setup made.
    """

    computation: str
    proto: object
    host: str
    files: dict
    initialized: bool = False
    slots: dict = Factory(dict)
    setup: dict = Factory(dict)
    server_args: dict = Factory(dict)
    node_globals: object = None
    client: object = None
    key: object = None
    components: object = None
    #: Set up on its servers: counts for C{--serve} once released.
    served: bool = False


class Hosting:
    """
    How a node hosts one computation at a time: held (L{prepare}) while its
    files arrive, reserved with its code and setup, its servers enabled,
    closed and restarted, then released.
    """

    def prepare(self, proto, computation, files):
        """
        Hold this node for C{computation} of C{proto}'s scheduler, which
        streams the component C{files} (C{[name, size]} pairs) next.

        @raise DispycosError: when the node takes no computation now (busy,
            stopping, quitting, outside its service window).
        @raise FileTransferError: naming a file that is over
            C{--max_file_size} or whose name is refused.
        """
        if self.stopping:
            raise DispycosError("node %s is stopping" % self.name)
        self._check_accepting()
        active = self.active
        if active is not None and not (active.computation == computation and active.proto is proto
                                       and not active.initialized):
            if active.computation == computation:
                raise DispycosError("computation %s is already set up on node %s" % (computation, self.name))
            raise DispycosError("node %s is busy with another computation" % self.name)
        expected = {}
        for item in files or ():
            try:
                name, size = str(item[0]), int(item[1])
            except (TypeError, ValueError, IndexError):
                raise FileTransferError("bad entry %r in the list of component files" % (item,))
            safe_join(self.node_dir, name)
            if self.max_file_size and size > self.max_file_size:
                raise FileTransferError("component file %s is %d bytes, over node %s's --max_file_size of %d bytes"
                                        % (name, size, self.name, self.max_file_size))
            expected[name] = size
        self._wipe_node_dir()
        self.scheduler_watch.heard()  # its scheduler's silence counts from now
        self.active = HostedComputation(computation, proto, self._announce_host(proto), expected)
        self.log.info("held for computation {c} ({n} component file(s) to come)", c=computation, n=len(expected))

    def _check_files(self, active):
        """Every component file announced in L{prepare} arrived whole (L{SetupError} otherwise)."""
        for name, size in active.files.items():
            path = safe_join(self.node_dir, name)
            try:
                got = os.path.getsize(path)
            except OSError:
                got = None
            if got != size:
                raise SetupError("component file %s did not arrive at node %s" % (name, self.name))

    @defer.inlineCallbacks
    def reserve(self, proto, computation, key, cpus, components, client, setup):
        if self.stopping:
            raise DispycosError("node %s is stopping" % self.name)
        active = self.active
        if active is None or active.computation != computation or active.proto is not proto:
            if active is not None and active.computation != computation:
                raise DispycosError("node %s is busy with another computation" % self.name)
            raise DispycosError("computation %s was not prepared on node %s" % (computation, self.name))
        if active.initialized:
            raise DispycosError("computation %s is already set up on node %s" % (computation, self.name))
        self._check_files(active)
        count = len(self.slots) if cpus <= 0 else min(cpus, len(self.slots))
        active.key, active.components, active.client, active.setup = key, components, client, setup
        active.initialized = True
        slots = self.slots[:count]
        try:
            prepared = []
            if setup.get("node_setup"):
                # Once per node, in its first server, before the others start;
                # the globals it makes reach every server.
                first = slots[0]
                yield self._init_slot(first, active)
                active.node_globals = yield self._run_setup(first, setup["node_setup"], setup.get("setup_args"),
                                                               True, self.node_dir)
                prepared.append(self._prepare_slot(first, active, init=False))
                slots = slots[1:]
            results = yield defer.DeferredList(prepared + [self._prepare_slot(slot, active) for slot in slots],
                                               consumeErrors=True)
        except Exception:
            yield self.release(computation, True)
            raise
        failures = [r for ok, r in results if not ok]
        servers = [r for ok, r in results if ok]
        if not active.slots:
            yield self.release(computation, True)
            why = failures[0].getErrorMessage() if failures else "; ".join(s.get("error", "") for s in servers)
            raise SetupError("node %s could not set up the computation: %s" % (self.name, why or "no server"))
        for f in failures:
            self.log.warn("a server could not be set up: {f}", f=f.getErrorMessage())
        self.log.info("computation {c} set up on {n} servers", c=computation, n=len(servers))
        active.served = True
        self.computations_taken += 1
        self.note_activity()
        return {"servers": servers, "node_dir": self.node_dir}

    def _wipe_node_dir(self):
        """Empty the node directory; links in it (or a link swapped in for it) are removed, never followed."""
        paths.wipe_tree(self.node_dir)

    @defer.inlineCallbacks
    def release(self, computation, terminate):
        active = self.active
        if active is None or active.computation != computation:
            return
        # Servers leave with the computation; fresh ones replace them, so no
        # global of this computation survives it (servers it never reached
        # stay). Without terminate, tasks run to their end (no kill after a grace).
        if active.initialized:
            grace = config.ServerKillGrace if terminate else None
            yield defer.DeferredList([s.stop(terminate, grace) for s in self.slots if s.running], consumeErrors=True)
        if self.active is active:
            self.active = None
        self._wipe_node_dir()
        self.log.info("computation {c} closed", c=computation)
        self.announce()
        self._released(active)

    def _active_for(self, computation):
        active = self.active
        if active is None or active.computation != computation:
            raise DispycosError("computation %s is not on node %s" % (computation, self.name))
        return active

    def _slot(self, index):
        if not 1 <= index <= len(self.slots):
            raise DispycosError("node %s has no server %d" % (self.name, index))
        return self.slots[index - 1]

    @defer.inlineCallbacks
    def enable_server(self, computation, index, args):
        """Run C{server_setup(*args)} on a held server (disable_servers)."""
        active = self._active_for(computation)
        slot = self._slot(index)
        function = active.setup.get("server_setup")
        if function:
            yield self._run_setup(slot, function, args, False, self._server_dir(slot))
        active.server_args[index] = args

    def _tell(self, active, index, event, location=""):
        proto = active.proto
        if self.active is active and proto.connected:
            proto.callRemote(commands.ServerEvent, computation=active.computation, index=index, event=event,
                             location=location)

    @defer.inlineCallbacks
    def close_server(self, computation, index, terminate=False, restart=False):
        """
        Close one server of the computation (its tasks end or are terminated);
        with C{restart} a fresh process takes its place in the computation.
        """
        active = self._active_for(computation)
        slot = self._slot(index)
        location = active.slots.pop(index, None)
        if location is None:
            return
        yield slot.stop(terminate, grace=config.ServerKillGrace if terminate else None)
        self._tell(active, index, "closed", location)
        if restart and self.active is active:
            try:
                yield self._reinit(slot, active)
            except Exception as e:
                self.log.warn("server {i} could not restart: {e}", i=index, e=e)

    def close_request(self, slot, node, terminate, restart):
        """A task called C{dispycos_close_server()} or C{dispycos_close_node()}."""
        active = self.active
        if active is None or slot.index not in active.slots:
            return
        if node:
            self.log.info("a task closes node {n} for computation {c}", n=self.name, c=active.computation)
            self._tell(active, 0, "node_closed")
            self.release(active.computation, terminate)
        else:
            self.close_server(active.computation, slot.index, terminate, restart).addErrback(
                lambda f: self.log.warn("closing server {i}: {f}", i=slot.index, f=f.getErrorMessage()))

    def scheduler_lost(self, proto):
        active = self.active
        if active is not None and active.proto is proto and not self.stopping:
            self.log.warn("scheduler of computation {c} is gone; releasing it", c=active.computation)
            self.release(active.computation, True)

# -*- test-case-name: tests.unit.test_tasks -*-
"""
The seam between a computation and its scheduler.

A L{Computation} talks to an L{IScheduler}: the private L{Scheduler} in its
own process, or L{RemoteScheduler}, the client side of a shared one. A
scheduler talks back to the computation's L{IComputationEvents}: the
client's own (L{dispycos.client.events.ComputationEvents}) or, in a shared
scheduler, the stand-in for a client elsewhere
(L{dispycos.scheduler.shared.RemoteComputation}).
"""

from zope.interface import Attribute, Interface


class IScheduler(Interface):
    """What a computation asks of the scheduler that runs it."""

    reactor = Attribute("The reactor the scheduler runs on.")
    runtime = Attribute("The L{Runtime} through which the computation's tasks are reached.")
    dest_path = Attribute("Where files sent back land by default (None: a temporary directory).")

    def submit(computation):
        """
        Queue C{computation} (an L{IComputationEvents}); the scheduler calls
        its C{activated()} when its turn comes, C{server_ready()} once a
        server is ready, or C{schedule_failed(exc)}.
        """

    def release(computation, terminate=False):
        """Deferred firing once every node of C{computation} is released (or it left the queue)."""

    def place(computation, cpu, where=None, avoid=None):
        """
        A server entry (C{location}, C{node_addr}) for a task, booked for it at
        once, or a Deferred firing with one (C{cancel()} stops waiting: the
        task never gets that server): a CPU task waits, first come first
        served, for a server without a CPU task. C{where}: None, a node
        (address or name) or a server L{Location}. C{avoid}: server
        L{Location}s not to use while another server exists (a retry).
        """

    def task_done(entry, cpu):
        """A task placed on C{entry} (by L{place}) ended."""

    def servers_now(computation):
        """The servers that take C{computation}'s tasks now (a list)."""

    def servers_of(computation):
        """Deferred firing with the L{Location}s of C{computation}'s servers."""

    def nodes_of(computation):
        """Deferred firing with the addresses of C{computation}'s nodes."""

    def control(computation, action, target, args=None, terminate=False, restart=False):
        """Deferred firing once C{action} (C{enable_node}, C{suspend_server}, ...) was applied to C{target}."""

    def held_node_link(computation, where):
        """The connection to node C{where}, held for C{computation} but without servers yet, or None."""

    def node_report():
        """What each known node answered, for error messages."""


class IComputationEvents(Interface):
    """What a scheduler tells (and asks) the computation it runs."""

    id = Attribute("The computation's id (set by the scheduler when it is submitted).")
    key = Attribute("The key its servers and clients prove to each other (set when it becomes active).")
    pulse_interval = Attribute("Seconds between heartbeats.")
    disable_nodes = Attribute("True: nodes wait for enable_node before their setup.")
    disable_servers = Attribute("True: servers wait for enable_server before their setup.")
    components = Attribute("The pickled components (bytes; the scheduler passes them on unread).")
    files = Attribute("C{(name, path)} of the component files, streamed to every node.")
    status_task = Attribute("Where status messages go (a monitor may watch it).")
    allocations = Attribute("True when the computation's allocations decide which nodes it uses (and how many servers).")

    def scheduling():
        """True while C{schedule()} waits to be answered."""

    def activated():
        """The computation's turn came: it is the active one."""

    def server_ready():
        """A server is ready for its tasks (C{schedule()} fires)."""

    def schedule_failed(exc):
        """It cannot be scheduled (C{schedule()} errbacks with C{exc})."""

    def closed_by_scheduler(reason):
        """The scheduler closed it (a shared scheduler stopping, or a zombie client)."""

    def scheduler_lost(exc):
        """The connection to a shared scheduler is gone."""

    def status(status, info=None, exception=None):
        """A status message for its C{status_task}."""

    def status_message(msg):
        """A ready-made message (a node's L{DispycosNodeAvailInfo}) for its C{status_task}."""

    def allocate(info):
        """How many servers of the node described by C{info} (a L{DispycosNodeInfo}) to use (or a Deferred)."""

    def setup_names():
        """Component names of C{node_setup} and C{server_setup} (or None)."""

    def close(terminate=False):
        """Close it (the scheduler is closing)."""

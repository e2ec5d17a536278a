# -*- test-case-name: tests.test_httpd -*-
"""
A browser monitor for a computation, served by C{twisted.web} on the
client's reactor.

    comp = dispycos.Computation([compute])
    monitor = dispycos.httpd.HTTPServer(comp)        # before comp.schedule()
    await comp.schedule()
    ...
    await comp.close()
    await monitor.shutdown()

Open C{http://127.0.0.1:8181/} for the Cluster page (nodes, their resources
and task counts), then the Node and Server pages (a server's running tasks,
which can be terminated from there).

The monitor learns everything from the computation's status messages: it
installs itself as the computation's C{status_task} and forwards every
message to the C{status_task} the computation already had (a local L{Task}
or a callable), so both see the same stream. Create it before
C{comp.schedule()}; created later it still works, but knows only of what
happens afterwards.

Every request needs the monitor's access token, a random value (or the
C{token} given): the monitor logs and prints its address with it
(C{http://127.0.0.1:8181/?token=...}, also L{HTTPServer.url}). A request
with the right C{token} query parameter is answered with the token as an
HttpOnly, SameSite=Strict cookie (C{dispycos_monitor_<port>}), which serves
instead from then on; without either, or with a wrong one: 403. So only who
was shown the address (the user who started the monitor) can watch or act,
other local users and other sites cannot.

Any number of browsers may watch at once: every page fetches the full state
from the JSON resources (C{/cluster_status}, C{/node_info}, C{/server_info})
and re-fetches when C{/events} (server-sent events) announces a change, and
every C{poll_sec} seconds in any case. Requests that change the cluster
(C{/terminate_tasks}, C{/suspend_node}, ...) are POST only and are refused
(403) when the browser says they come from another site (C{Origin},
C{Referer} or C{Sec-Fetch-Site}); requests naming a host that is neither an
IP address, C{localhost}, this machine's name nor the configured C{host}
are refused too (DNS rebinding). Clients other than browsers (which send
neither C{Origin} nor C{Referer}) may POST.

Resources (every answer is JSON unless said otherwise):

    GET  /, /cluster.html, /node.html, /server.html, /monitor.js, /monitor.css
    GET  /cluster_status[?history=0]     totals and every node (with a short
                                         resource history per node)
    GET  /node_info?host=IP-or-name      a node and its servers (404 if unknown)
    GET  /server_info?location=A:P&limit=N
                                         a server and its running tasks (limit 0: all),
                                         plus its recently finished ones
    GET  /events                         text/event-stream: "hello", then a
                                         "message" for every change, "settings",
                                         "shutdown"; ": keepalive" every 15 s
    POST /terminate_tasks  task=ID ...   -> list of the ids terminated
    POST /suspend_node, /resume_node  host=IP ...
    POST /suspend_server, /resume_server  location=A:P ...
                                         -> {"done": [...], "failed": {target: error}}
    POST /update  poll_sec=S show_task_args=true|false
                                         -> the settings; GET /update reads them

At most C{max_streams} (32) C{/events} streams are served at once (more are
refused with 503), and a stream whose browser does not read is dropped
once more than L{MAX_UNSENT} bytes wait for it.

Task ids are C{str(rtask)}: C{name/tid@addr:port}. State survives the
computation's close: the resources answer with the final state until
L{HTTPServer.shutdown}.

The monitor is put together in L{dispycos.web} (model, resources, event
hub, token checks, pages, listening service); this module keeps its public
names. The monitor needs of its C{computation} only a C{status_task} attribute and,
for the actions, C{suspend_node}, C{resume_node}, C{suspend_server} and
C{resume_server} returning Deferreds; tasks are terminated with their own
C{terminate()}.
"""

from dispycos.web.model import ARG_TEXT_LIMIT, HISTORY_SAMPLES, HISTORY_SECONDS, RECENT_FINISHED
from dispycos.web.monitor import HTTPServer, Monitor
from dispycos.web.sse import MAX_STREAMS, MAX_UNSENT

__all__ = ["HTTPServer", "Monitor", "MAX_STREAMS", "MAX_UNSENT", "HISTORY_SECONDS", "HISTORY_SAMPLES",
           "RECENT_FINISHED", "ARG_TEXT_LIMIT"]

"""
The browser monitor of a computation (C{dispycos.httpd.HTTPServer} is
L{dispycos.web.monitor.HTTPServer}), in parts with one job each:

    model.py      the cluster state, fed by status messages, on the reactor's clock
    resources.py  the JSON resources and their one render helper
    actions.py    what POSTs do to the computation (terminate, suspend, resume)
    sse.py        the server-sent events hub of /events, with its limits
    auth.py       the access token (URL, then cookie) and the host/origin checks
    pages.py      the pages (static/) served by twisted.web.static.File
    service.py    the site and the service listening on a strports description
    monitor.py    Monitor (a MultiService of the above) and HTTPServer

The pages are in C{static/}: C{cluster.html}, C{node.html}, C{server.html},
C{monitor.js}, C{monitor.css}.
"""

import os

#: the directory of the monitor's pages, scripts and styles
STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")

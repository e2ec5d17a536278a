"""
The browser monitor's pages (C{static/}: C{cluster.html}, C{node.html},
C{server.html}, C{monitor.js}, C{monitor.css}), served by L{dispycos.httpd}.
"""

import os

#: the directory of the monitor's pages, scripts and styles
STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")

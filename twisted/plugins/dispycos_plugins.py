# twistd plugins of dispycos. No __init__.py beside this file (or in twisted/):
# Twisted finds plugins in every twisted/plugins directory on sys.path.
from twisted.application.service import ServiceMaker

dispycosnode = ServiceMaker(
    "dispycos node", "dispycos.node.tap", "Run a dispycos node (server processes for computations).", "dispycosnode"
)
dispycos = ServiceMaker(
    "dispycos scheduler", "dispycos.scheduler.tap", "Run a shared dispycos scheduler.", "dispycos"
)

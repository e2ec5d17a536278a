"""
The blocking API's public path: C{from dispycos.blocking import Computation,
LocalCluster}. It lives in L{dispycos.client.blocking}.
"""

from dispycos.client.blocking import *  # noqa: F401,F403
from dispycos.client.blocking import __all__  # noqa: F401

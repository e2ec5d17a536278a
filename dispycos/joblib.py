"""
C{import dispycos.joblib} registers the C{"dispycos"} joblib backend
(L{dispycos.client.joblib}, where it lives).
"""

from dispycos.client.joblib import *  # noqa: F401,F403
from dispycos.client.joblib import __all__  # noqa: F401

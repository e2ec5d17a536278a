"""
C{python -m dispycos.server}: the program of a server process (L{dispycos.server.process.main}).

Twisted is imported without pyOpenSSL first (see L{dispycos._lean}), before
anything imports its networking modules.
"""

import sys

from dispycos import _lean

_lean.import_twisted(twisted_tls="--twisted_tls" in sys.argv)

from dispycos.server.process import main  # noqa: E402

main()

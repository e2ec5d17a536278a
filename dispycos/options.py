# -*- test-case-name: tests.test_cli -*-
"""
Shared pieces of the command-line options of C{dispycosnode} and C{dispycos}.
"""

import sys

from twisted.python import usage


class UnderscoreOptions(usage.Options):
    """
    C{usage.Options} whose repeatable C{opt_*} methods also answer to the
    underscore spelling of the manual (C{--tcp_ports} as well as C{--tcp-ports}).
    """

    def parseOptions(self, options=None):
        if options is None:
            options = sys.argv[1:]
        dashed = {name.replace("_", "-") for name in self._repeatable}
        fixed = []
        for arg in options:
            if arg.startswith("--"):
                name, eq, value = arg[2:].partition("=")
                if name.replace("_", "-") in dashed:
                    arg = "--" + name.replace("_", "-") + eq + value
            fixed.append(arg)
        return super().parseOptions(fixed)

    _repeatable = ()

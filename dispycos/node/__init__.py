"""
The node daemon C{dispycosnode}: its service, server pool, console, service windows,
configuration file and twistd plugin.
"""

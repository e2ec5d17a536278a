"""
A server process (C{python -m dispycos.server}), started by a node, one per CPU: its
main program and how it runs the tasks its clients create.
"""

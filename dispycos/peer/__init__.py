"""
The task runtime every process of a computation runs (the client and every server):
its listener and links, local and remote tasks, channels, outcomes, programs, forwarded output.
"""

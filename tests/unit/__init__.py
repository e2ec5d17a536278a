"""
The fast in-memory tier: no processes, no sockets, no sleeps (fake requests,
a Clock or MemoryReactorClock, in-memory connections). Run it alone with
C{pytest tests/unit}.
"""

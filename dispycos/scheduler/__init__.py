"""
The scheduler: node links, placement and the queue of computations (L{core}),
allocation, and the shared scheduler program C{dispycos} (L{shared}, L{tap}).
"""

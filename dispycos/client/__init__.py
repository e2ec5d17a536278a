"""
The client side: L{computation.Computation}, maps, retries, the client side of a
shared scheduler, L{local.LocalCluster}, and the blocking API.
"""

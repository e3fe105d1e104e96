"""The device agents a study measures on: the pool, the roster of a cluster, dispatch."""

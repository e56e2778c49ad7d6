"""What every caller of a function shares, below the gateway: the :class:`~.invoker.Invoker` shape
and the errors an invocation raises.

Event sources, the async dispatcher, the cluster worker's gateway client and the gateway itself all
invoke functions and react to the same two refusals (throttled, not found); the classes live here so
that the lower layers catch the very classes the gateway raises (see docs/internals.md, "Import layers").
"""

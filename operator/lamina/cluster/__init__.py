"""Cluster-mode wiring: the gateway and event source workers as they run in Kubernetes."""

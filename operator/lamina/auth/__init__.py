"""Who is calling and what they may do: SigV4 and bearer-token authentication, Kubernetes RBAC
authorization, and the secrets lamina derives for functions (invoke secret, execution credentials).

Modules here import neither aiohttp nor kopf; the Kubernetes client is used only by the cluster
checkers (:mod:`lamina.auth.kube`), so the pure parts are cheap to import for builders and tests.
"""

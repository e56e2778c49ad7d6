"""lamina_runtime: the execution environment. Standard library only, so a cold start stays fast."""

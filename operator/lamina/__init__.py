"""lamina: AWS Lambda semantics for Python functions on Kubernetes."""

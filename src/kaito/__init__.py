"""KAITO, the Kubernetes AI Toolchain Operator, in Python."""

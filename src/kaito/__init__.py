"""KAITO, the Kubernetes AI Toolchain Operator, in Python."""

__version__ = "0.1.0"
"""The operator's version (pyproject.toml's); its images are tagged with it."""

"""Development tooling, never shipped: the local control plane, the emulated cloud (the AKS
agent-pool API, the Hugging Face hub), the emulated and real nodes, the registry, the
image builds and the demo.

It lives beside `kaito`, not inside it: the controller image installs only `kaito` and
`kaito_contracts`, and an import contract (pyproject.toml) forbids production code to
import this package. An editable install (``make setup``) puts ``src/`` on the path, so it
is importable there; ``kaito dev ...`` runs it as ``python -m kaito_dev ...``.
"""

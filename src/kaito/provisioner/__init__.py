"""gpu-provisioner: serves Machine custom resources with AKS agent pools.

Its own process (``kaito gpu-provisioner``) on `kaito.runtime`. It knows nothing about
Workspaces beyond the ``kaito.sh/workspace`` label on Machines; Machines and Nodes are
its whole interface (PROVISIONER.md). Modules:

- `azure`: the `AgentPoolAPI` interface, its SDK implementation, error classification.
- `lifecycle`: the Machine reconciler (launch, register, initialize, terminate).
- `gc`: garbage collection of orphan agent pools and of Machines whose pool vanished.
- `app`: wiring into a `kaito.runtime.Manager`; `config`: settings from the environment.
- `emulator`: an AKS agent-pool API for tests and the local cluster.
"""

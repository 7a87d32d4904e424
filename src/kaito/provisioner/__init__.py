"""gpu-provisioner: serves Machine custom resources with AKS agent pools.

Its own process (``kaito gpu-provisioner``) on `kaito.runtime`. It knows nothing about
Workspaces beyond the ``kaito.sh/workspace`` label on Machines; Machines and Nodes are
its whole interface (PROVISIONER.md). Modules:

- `azure`: the `AgentPoolAPI` interface and its SDK implementation; `errors`: Azure
  failures classified; `credentials`: the process's ARM credential.
- `lifecycle`: the Machine reconciler, the order of its steps (and terminate);
  `launch`: the agent pool, resumable; `registration`: the Node, registered and
  initialized; `context`: one reconcile's Machine model and every write about it;
  `conditions`: the status draft; `pool` and `nodes`: pure decisions.
- `gc`: garbage collection of orphan agent pools and of Machines whose pool vanished.
- `app`: wiring into a `kaito.runtime.Manager`; `config`: settings from the environment.
- `emulator`: an AKS agent-pool API for tests and the local cluster.
"""

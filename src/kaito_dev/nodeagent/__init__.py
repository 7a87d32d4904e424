"""The node agent: plays kubelet for the emulated GPU nodes of the local cluster.

The local control plane has no kubelet: the scheduler binds pods to the AKS emulator's
Nodes and nothing runs them. `NodeAgent` does, as local processes on CPU::

    agent = NodeAgent(client, state_dir=Path(".kaito/dev/node-agent"))
    await agent.run()          # until agent.stop()

or ``kaito dev node-agent --kubeconfig K --state-dir D``.

Contract:

- Pods bound (``spec.nodeName``) to a Node matching ``node_selector`` (default: has the
  ``kubernetes.azure.com/agentpool`` label) are this agent's.
- Only the project's own images run: containers whose command is ``python -m
  kaito_inference...`` or ``python -m kaito_tuning...`` run with ``--python`` (default
  ``.venv-inference/bin/python``) and ``PYTHONPATH=images/inference:images/tuning:src``
  (``src`` for ``kaito_contracts``, which the images' Dockerfiles copy in).
  Any other container waits in ``ErrImagePull`` then ``ImagePullBackOff`` (message:
  "image X is not available to the node agent ...") and the pod stays Pending.
- Volumes are local folders under ``<state-dir>/pods/<ns>_<name>_<uid8>/`` (emptyDir,
  configMap, secret; hostPath is the path itself, except the node's model cache under
  ``/var/lib/kaito``, which is on the emulated node's own disk,
  ``<state-dir>/node-disk/<node>/var/lib/kaito``); argv paths under a mount are
  rewritten to the local path (`command`, `volumes`).
- The weights: a ``fetch-weights`` init container (``python -m kaito_inference.fetch``)
  runs for real, with ``HF_ENDPOINT`` on ``--hf-endpoint`` (the local stack's hub
  emulator, which serves the tiny stand-in model under every preset's repo at its pinned
  revision), into the node's cache: once per node, later pods load from the cache.
  Without ``--hf-endpoint`` it copies the tiny local model (built once under
  ``<state-dir>/tiny-model``) into the cache folder instead.
  ``/workspace/weights`` (a private preset's image) is replaced by that model; CPU
  adaptations (dtype float32, tensor parallel 1, ``--host <pod IP>``) are listed in the
  pod annotations
  ``kaito.sh/node-agent-model`` and ``kaito.sh/node-agent-adaptations`` (JSON list).
- Each pod gets its own loopback IP (127.0.1.x), reported as ``status.podIP``;
  ``hostIP`` is 127.0.0.1. The inference server listens on ``<podIP>:<--port>``.
- Status is kubelet's: phase, conditions, (init)containerStatuses, restartCount,
  ``CrashLoopBackOff`` with ``lastState.terminated.message`` = the log tail; readiness
  from ``readinessProbe`` httpGet/tcpSocket polled every ~1 s. Liveness and startup
  probes are not run. Logs: ``<pod dir>/logs/<container>.log``.
- A terminating pod's processes get SIGTERM (SIGKILL after its grace period, capped at
  10 s); then its folder is removed and it is deleted with grace 0. Terminating pods on
  Nodes that no longer exist are deleted with grace 0 too.
- Children die with the agent (process group + ``PR_SET_PDEATHSIG``); what they
  spawned carries ``KAITO_NODE_AGENT_STATE=<state-dir>`` in its environment and is
  killed by the next agent on the same state folder. A new agent adopts nothing and
  starts the pods again.
"""

from kaito_dev.nodeagent.agent import DEFAULT_NODE_SELECTOR, DEFAULT_PYTHON, NodeAgent

__all__ = ["DEFAULT_NODE_SELECTOR", "DEFAULT_PYTHON", "NodeAgent"]

"""The workspace controller, one subpackage per concept.

- ``admission``: every admission rule of WORKSPACE.md and the webhook serving them;
- ``nodes``: which nodes serve a Workspace and the Machines/NodeClaims for the rest;
- ``workload``: an inference Workspace's ConfigMap, Services and Deployment/StatefulSet;
- ``tuning``: a tuning Workspace's Job;
- ``status``: conditions and the verdicts folded from workloads and pods;
- ``podspec``: what every pod it runs has in common (scheduling, GPUs, labels, owner);
- ``plan``: what one reconcile takes from the injected catalog (preset, SKU, engine, disk);
- ``reconcile`` ties them together; ``app`` wires the manager; ``cli`` is the entrypoint.

The layering (an import-linter contract, ``make lint``): cli > app > reconcile >
workload > tuning > podspec > nodes > status | plan; ``admission`` imports none of the
reconcile side, so the webhook's rules cannot come to depend on reconcile machinery.
"""

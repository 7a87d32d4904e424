"""A Workspace's status: conditions as a working copy (``draft``) and the verdicts folded
from workloads and pods (``readiness``)."""

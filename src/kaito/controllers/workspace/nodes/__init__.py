"""The GPU nodes a Workspace runs on: which existing nodes qualify (``selection``), the
Machines or NodeClaims that provision the rest (``machines``, ``provisioning``), and the
reconcile steps that create them and fold their state into conditions (``sync``)."""

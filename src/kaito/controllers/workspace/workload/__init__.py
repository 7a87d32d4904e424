"""What an inference Workspace runs as: its objects (``inference``), the pod spec every
workload shares (``podspec``), and applying them without needless writes (``sync``)."""

"""What a Workspace runs as: an inference Workspace's objects (``inference``), and
applying them or a tuning Job without needless writes (``sync``)."""

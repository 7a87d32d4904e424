"""Development tooling: the local control plane and (later) the emulated cloud and nodes."""

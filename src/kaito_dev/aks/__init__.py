"""An emulated AKS agent-pool API (ARM wire protocol over HTTPS) that registers Nodes.

Used by the tests, the local dev cluster and ``kaito dev aks-emulator``; see `server`.
"""

from kaito_dev.aks.faults import Fault, FaultKind, Op
from kaito_dev.aks.server import AKSEmulator, EmulatorConfig, RecordedRequest

__all__ = ["AKSEmulator", "EmulatorConfig", "Fault", "FaultKind", "Op", "RecordedRequest"]

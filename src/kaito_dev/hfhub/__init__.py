"""``kaito dev hf-hub``: a Hugging Face hub emulator the real ``huggingface_hub`` client
downloads from (``HF_ENDPOINT``), with injected faults. See `server.py`."""

from kaito_dev.hfhub.faults import Fault, FaultKind, Scope
from kaito_dev.hfhub.server import HubEmulator, RecordedRequest

__all__ = ["Fault", "FaultKind", "HubEmulator", "RecordedRequest", "Scope"]

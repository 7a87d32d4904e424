"""The shape every Kubernetes object has here: a raw JSON dict.

Informers, the cache and the client keep objects as the dicts ``json.loads`` returns
(RUNTIME.md, "Watch with raw JSON"); typed models are built from them at the edge of a
reconcile. One alias for that dict, so that modules do not each declare their own.
"""

from __future__ import annotations

from typing import Any

Obj = dict[str, Any]
"""A Kubernetes object (or any JSON object within one) as decoded from the API."""

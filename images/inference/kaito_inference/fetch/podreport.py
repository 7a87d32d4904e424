"""The ``kaito.sh/weights-progress`` annotation on the fetcher's own pod.

The workspace controller reads it to say ``DownloadingWeights`` with bytes and rate.
Only when the pod can: ``POD_NAME`` and ``POD_NAMESPACE`` set (downward API), the
in-cluster service (``KUBERNETES_SERVICE_HOST``/``_PORT``) and the ServiceAccount's
token and ``ca.crt`` mounted; the ServiceAccount needs ``patch`` on its pods. A merge
patch with the standard library's HTTP client (the image has no Kubernetes client);
failures are logged by the caller, never fatal.
"""

from __future__ import annotations

import json
import os
import ssl
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

__all__ = ["ANNOTATION", "DEFAULT_SERVICEACCOUNT_DIR", "PodAnnotator", "progress_value"]

ANNOTATION = "kaito.sh/weights-progress"
DEFAULT_SERVICEACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


def progress_value(done: int, total: int, rate: float, now: datetime | None = None) -> str:
    """The annotation's compact JSON."""
    updated = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return json.dumps(
        {"bytesDone": done, "bytesTotal": total, "bytesPerSecond": round(rate), "updated": updated},
        separators=(",", ":"),
    )


class PodAnnotator:
    """PATCHes the annotation on ``namespace/pod`` through ``server``."""

    def __init__(
        self, server: str, namespace: str, pod: str, *, token_file: Path, ca_file: Path
    ) -> None:
        self.server, self.namespace, self.pod = server.rstrip("/"), namespace, pod
        self.token_file, self.ca_file = token_file, ca_file
        self._tls: ssl.SSLContext | None = None

    @classmethod
    def from_environment(
        cls, serviceaccount_dir: Path = DEFAULT_SERVICEACCOUNT_DIR
    ) -> PodAnnotator | None:
        """The in-cluster annotator, or None when the pod lacks any of what it needs."""
        env = os.environ
        pod, namespace = env.get("POD_NAME"), env.get("POD_NAMESPACE")
        host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
        token, ca = serviceaccount_dir / "token", serviceaccount_dir / "ca.crt"
        if not (pod and namespace and host and port and token.is_file() and ca.is_file()):
            return None
        host = f"[{host}]" if ":" in host else host
        return cls(f"https://{host}:{port}", namespace, pod, token_file=token, ca_file=ca)

    def report(self, done: int, total: int, rate: float, *, final: bool) -> None:
        body = {"metadata": {"annotations": {ANNOTATION: progress_value(done, total, rate)}}}
        request = urllib.request.Request(
            f"{self.server}/api/v1/namespaces/{self.namespace}/pods/{self.pod}",
            data=json.dumps(body).encode(),
            method="PATCH",
            headers={
                "Content-Type": "application/merge-patch+json",
                "Accept": "application/json",
                # Re-read every time: projected ServiceAccount tokens rotate.
                "Authorization": f"Bearer {self.token_file.read_text().strip()}",
            },
        )
        if self._tls is None:  # here, so that a bad ca.crt is a failed report, not a crash
            self._tls = ssl.create_default_context(cafile=str(self.ca_file))
        with urllib.request.urlopen(request, timeout=5, context=self._tls) as response:
            response.read()

"""How the provisioner authenticates to ARM: one credential for the process.

Apart from the SDK client (`kaito.provisioner.azure`) because the choice is the
deployment's, not the API's: workload identity in AKS, a managed identity elsewhere,
and a static token for the AKS emulator, which accepts any.
"""

from __future__ import annotations

import os
import time
from types import TracebackType
from typing import Any

from azure.core.credentials import AccessToken

__all__ = ["StaticTokenCredential", "make_credential"]


class StaticTokenCredential:
    """An async credential that always returns one bearer token.

    For the AKS emulator only (it accepts any token): production uses
    ``WorkloadIdentityCredential`` / ``DefaultAzureCredential`` (see `make_credential`).
    """

    def __init__(self, token: str, *, lifetime: float = 3600.0) -> None:
        self._token = token
        self._lifetime = lifetime

    async def get_token(
        self,
        *scopes: str,
        claims: str | None = None,
        tenant_id: str | None = None,
        enable_cae: bool = False,
        **kwargs: Any,
    ) -> AccessToken:
        return AccessToken(self._token, int(time.time() + self._lifetime))

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> StaticTokenCredential:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc: BaseException | None = None,
        tb: TracebackType | None = None,
    ) -> None:
        return None


def make_credential(static_token: str | None = None) -> Any:
    """The process's credential: a static token (emulator), workload identity when its
    federated token file is configured, else ``DefaultAzureCredential`` (managed identity)."""
    if static_token:
        return StaticTokenCredential(static_token)
    from azure.identity.aio import DefaultAzureCredential, WorkloadIdentityCredential

    if os.environ.get("AZURE_FEDERATED_TOKEN_FILE"):
        return WorkloadIdentityCredential()
    return DefaultAzureCredential()

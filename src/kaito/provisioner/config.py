"""The provisioner's settings, from the environment (the Deployment sets them).

| variable                     | meaning                                            | default |
|------------------------------|----------------------------------------------------|---------|
| ARM_SUBSCRIPTION_ID          | subscription of the AKS cluster                    | required |
| ARM_RESOURCE_GROUP           | resource group of the AKS cluster                  | required |
| AZURE_CLUSTER_NAME           | the AKS cluster (managedClusters/<name>)           | required |
| LOCATION                     | the cluster's region                               | eastus |
| ARM_BASE_URL                 | ARM endpoint (the emulator's URL in tests/dev)     | ARM |
| ARM_CA_BUNDLE                | CA file to verify ARM_BASE_URL with                | system |
| ARM_STATIC_TOKEN             | fixed bearer token, no Azure identity (emulator)   | unset |
| ARM_POLLING_INTERVAL         | seconds between LRO polls without Retry-After      | 10 |
| REGISTRATION_TIMEOUT_SECONDS | launched but no Node after this: replace Machine   | 900 |
| GC_INTERVAL_SECONDS          | orphan pool / vanished pool sweep period           | 120 |
| GC_MIN_AGE_SECONDS           | an orphan pool younger than this is left alone     | 30 |
| MAX_CONCURRENT_RECONCILES    | Machines launched in parallel                      | 50 |
| LAUNCH_BACKOFF_BASE_SECONDS  | first retry delay after an Azure failure (doubles) | 5 |
| LAUNCH_BACKOFF_MAX_SECONDS   | longest retry delay after Azure failures           | 300 |
| MACHINE_LABEL_SELECTOR       | label selector of the Machines served      | kaito.sh/workspace |

Identity (``azure-identity``): AZURE_CLIENT_ID, AZURE_TENANT_ID, AZURE_FEDERATED_TOKEN_FILE,
AZURE_AUTHORITY_HOST for workload identity (set by the AKS workload-identity webhook);
without AZURE_FEDERATED_TOKEN_FILE, DefaultAzureCredential (managed identity).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from kaito.provisioner.azure import ARM_ENDPOINT

__all__ = ["ConfigError", "ProvisionerConfig"]


class ConfigError(ValueError):
    """The environment does not describe a usable configuration; the message says what."""


@dataclass
class ProvisionerConfig:
    subscription_id: str
    resource_group: str
    cluster_name: str
    location: str = "eastus"
    arm_base_url: str = ARM_ENDPOINT
    arm_ca_bundle: str | None = None
    arm_static_token: str | None = None
    polling_interval: float = 10.0
    """Seconds between LRO polls when ARM sends no Retry-After. Default 10."""
    registration_timeout: float = 900.0
    """Launched but no Node registered after this many seconds: the Machine is replaced."""
    gc_interval: float = 120.0
    gc_min_age: float = 30.0
    workers: int = 50
    """Concurrent reconciles; each waits on its own agent-pool operation. Default 50."""
    lro_wait: float = 60.0
    """How long one reconcile waits on an operation before requeueing (the continuation
    token keeps the place), so deletions and shutdown are never stuck behind it."""
    launch_backoff_base: float = 5.0
    launch_backoff_max: float = 300.0
    delete_stall_after: float = 600.0
    """A Machine deleting this long with its agent pool still there is stalled: the DELETE
    is re-issued (at most once per this period) and the stall reported as the Machine's
    ``MachineTerminating`` condition and an Event. Default 600 s (AKS deletes in minutes)."""
    machine_selector: str = "kaito.sh/workspace"
    """A label selector: the Machines this provisioner serves (others are ignored)."""
    retry_total: int | None = None
    """The SDK's retries of 408/429/5xx; None: the SDK default (10)."""
    retry_backoff_factor: float | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ProvisionerConfig:
        env = os.environ if env is None else env
        missing = [
            k
            for k in ("ARM_SUBSCRIPTION_ID", "ARM_RESOURCE_GROUP", "AZURE_CLUSTER_NAME")
            if not env.get(k)
        ]
        if missing:
            raise ConfigError(f"missing environment variables: {', '.join(missing)}")

        def number(key: str, default: float) -> float:
            raw = env.get(key)
            if not raw:
                return default
            try:
                value = float(raw)
            except ValueError:
                raise ConfigError(f"{key}={raw!r} is not a number") from None
            if value < 0:
                raise ConfigError(f"{key}={raw!r} must not be negative")
            return value

        return cls(
            subscription_id=env["ARM_SUBSCRIPTION_ID"],
            resource_group=env["ARM_RESOURCE_GROUP"],
            cluster_name=env["AZURE_CLUSTER_NAME"],
            location=env.get("LOCATION") or "eastus",
            arm_base_url=env.get("ARM_BASE_URL") or ARM_ENDPOINT,
            arm_ca_bundle=env.get("ARM_CA_BUNDLE") or None,
            arm_static_token=env.get("ARM_STATIC_TOKEN") or None,
            polling_interval=number("ARM_POLLING_INTERVAL", 10.0),
            registration_timeout=number("REGISTRATION_TIMEOUT_SECONDS", 900.0),
            gc_interval=number("GC_INTERVAL_SECONDS", 120.0),
            gc_min_age=number("GC_MIN_AGE_SECONDS", 30.0),
            workers=max(1, int(number("MAX_CONCURRENT_RECONCILES", 50))),
            launch_backoff_base=max(0.001, number("LAUNCH_BACKOFF_BASE_SECONDS", 5.0)),
            launch_backoff_max=number("LAUNCH_BACKOFF_MAX_SECONDS", 300.0),
            delete_stall_after=number("DELETE_STALL_SECONDS", 600.0),
            machine_selector=env.get("MACHINE_LABEL_SELECTOR") or "kaito.sh/workspace",
        )

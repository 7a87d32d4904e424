"""Configuration from the environment; the emulator's fault matching."""

from __future__ import annotations

import pytest

from kaito.provisioner.config import ConfigError, ProvisionerConfig
from kaito_dev.aks.faults import Fault, FaultInjector, FaultKind, Op

REQUIRED = {"ARM_SUBSCRIPTION_ID": "s", "ARM_RESOURCE_GROUP": "rg", "AZURE_CLUSTER_NAME": "c"}


def test_defaults() -> None:
    cfg = ProvisionerConfig.from_env(REQUIRED)
    assert (cfg.subscription_id, cfg.resource_group, cfg.cluster_name) == ("s", "rg", "c")
    assert cfg.arm_base_url == "https://management.azure.com"
    assert cfg.registration_timeout == 900 and cfg.gc_interval == 120 and cfg.gc_min_age == 30
    assert cfg.location == "eastus" and cfg.arm_static_token is None
    assert cfg.machine_selector == "kaito.sh/workspace"
    assert cfg.delete_stall_after == 600


def test_overrides() -> None:
    cfg = ProvisionerConfig.from_env(
        {
            **REQUIRED,
            "ARM_BASE_URL": "https://127.0.0.1:8443",
            "ARM_CA_BUNDLE": "/ca.crt",
            "REGISTRATION_TIMEOUT_SECONDS": "60",
            "MAX_CONCURRENT_RECONCILES": "7",
            "DELETE_STALL_SECONDS": "90",
        }
    )
    assert cfg.delete_stall_after == 90
    assert cfg.arm_base_url == "https://127.0.0.1:8443" and cfg.arm_ca_bundle == "/ca.crt"
    assert cfg.registration_timeout == 60 and cfg.workers == 7


def test_missing_and_bad_values_are_named() -> None:
    with pytest.raises(ConfigError, match="ARM_RESOURCE_GROUP, AZURE_CLUSTER_NAME"):
        ProvisionerConfig.from_env({"ARM_SUBSCRIPTION_ID": "s"})
    with pytest.raises(ConfigError, match="GC_INTERVAL_SECONDS='soon' is not a number"):
        ProvisionerConfig.from_env({**REQUIRED, "GC_INTERVAL_SECONDS": "soon"})
    with pytest.raises(ConfigError, match="must not be negative"):
        ProvisionerConfig.from_env({**REQUIRED, "GC_MIN_AGE_SECONDS": "-1"})


def test_faults_match_by_op_pool_and_size_and_run_out() -> None:
    inj = FaultInjector()
    inj.add(Fault(FaultKind.QUOTA, pool="a", times=2))
    inj.add(Fault(FaultKind.SKU_UNAVAILABLE, vm_size="standard_nc6s_v3", times=None))
    assert inj.take(Op.GET, "a") is None  # quota faults the create only (default op)
    assert inj.take(Op.CREATE, "b", "Standard_D2") is None
    assert inj.take(Op.CREATE, "a", "Standard_D2").kind is FaultKind.QUOTA  # type: ignore[union-attr]
    assert inj.take(Op.CREATE, "a", "Standard_D2").kind is FaultKind.QUOTA  # type: ignore[union-attr]
    assert inj.take(Op.CREATE, "a", "Standard_D2") is None  # ran out
    for _ in range(3):
        assert inj.take(Op.CREATE, "z", "Standard_NC6s_v3").kind is FaultKind.SKU_UNAVAILABLE  # type: ignore[union-attr]
    inj.add(Fault(FaultKind.THROTTLE, op=Op.ANY))
    assert inj.take(Op.LIST) is not None


def test_faults_from_json() -> None:
    f = Fault.from_json({"kind": "failed-lro", "code": "ZonalAllocationFailed", "times": None})
    assert f.kind is FaultKind.FAILED_LRO and f.code == "ZonalAllocationFailed" and f.times is None
    assert f.to_json()["kind"] == "failed-lro"
    with pytest.raises(ValueError, match="unknown fault fields"):
        Fault.from_json({"kind": "quota", "oops": 1})
    with pytest.raises(ValueError, match="meteor"):
        Fault.from_json({"kind": "meteor"})

"""The SKU table is data (skus.yaml) with a validating loader."""

from __future__ import annotations

import pytest

from kaito.presets import skus


def test_table_matches_the_design_examples() -> None:
    table = skus.load_skus()
    assert len(table) == 47
    nc12 = skus.get_sku("Standard_NC12s_v3")
    assert nc12 is not None and (nc12.gpus, nc12.gpu_memory_gb, nc12.gpu) == (2, 32, "V100")
    assert nc12.gpu_memory_per_gpu_gb == 16
    h200 = skus.get_sku("standard_nd96isr_h200_v5")  # Azure sizes are case-insensitive
    assert h200 is not None and h200.gpus == 8 and h200.compute_capability_tuple == (9, 0)
    assert skus.get_sku("Standard_D4s_v3") is None


# Every family upstream KAITO's SKU list names, one size each: (gpus, GB total, model).
UPSTREAM_FAMILIES = {
    "Standard_NC6": (1, 12, "K80"),  # NC
    "Standard_NC24s_v2": (4, 64, "P100"),  # NCv2
    "Standard_NC24rs_v3": (4, 64, "V100"),  # NCv3
    "Standard_NC16as_T4_v3": (1, 16, "T4"),  # NCasT4_v3
    "Standard_NC96ads_A100_v4": (4, 320, "A100"),  # NC A100 v4
    "Standard_NC80adis_H100_v5": (2, 188, "H100"),  # NCads H100 v5
    "Standard_ND24rs": (4, 96, "P40"),  # ND
    "Standard_ND40rs_v2": (8, 256, "V100"),  # NDv2
    "Standard_ND96asr_v4": (8, 320, "A100"),  # ND A100 v4
    "Standard_ND96isr_H100_v5": (8, 640, "H100"),  # ND H100 v5
    "Standard_NV6": (1, 8, "M60"),  # NV
    "Standard_NV12s_v3": (1, 8, "M60"),  # NVv3
    "Standard_NV18ads_A10_v5": (1, 12, "A10"),  # NVadsA10 v5 (a GPU partition)
}


@pytest.mark.parametrize("name", sorted(UPSTREAM_FAMILIES))
def test_every_upstream_family_is_in_the_table(name: str) -> None:
    sku = skus.get_sku(name)
    assert sku is not None, name
    assert (sku.gpus, sku.gpu_memory_gb, sku.gpu) == UPSTREAM_FAMILIES[name]


def test_loader_names_the_bad_entry() -> None:
    with pytest.raises(ValueError, match="entry 1 is invalid"):
        skus._parse(
            {
                "skus": [
                    {
                        "name": "Standard_A",
                        "gpus": 1,
                        "gpu_memory_gb": 1,
                        "gpu": "x",
                        "compute_capability": "7.0",
                        "vcpus": 1,
                        "memory_gib": 1,
                    },
                    {"name": "Standard_B", "gpus": 0},
                ]
            }
        )
    with pytest.raises(ValueError, match="list under 'skus'"):
        skus._parse({"nope": []})

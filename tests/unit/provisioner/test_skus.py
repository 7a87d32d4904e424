"""The SKU table is data (skus.yaml) with a validating loader."""

from __future__ import annotations

import pytest

from kaito.presets import skus


def test_table_matches_the_design_examples() -> None:
    table = skus.load_skus()
    assert len(table) == 19
    nc12 = skus.get_sku("Standard_NC12s_v3")
    assert nc12 is not None and (nc12.gpus, nc12.gpu_memory_gb, nc12.gpu) == (2, 32, "V100")
    assert nc12.gpu_memory_per_gpu_gb == 16
    h200 = skus.get_sku("standard_nd96isr_h200_v5")  # Azure sizes are case-insensitive
    assert h200 is not None and h200.gpus == 8 and h200.compute_capability_tuple == (9, 0)
    assert skus.get_sku("Standard_D4s_v3") is None


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

"""Discovered cards merged with the admin's declarations."""

from __future__ import annotations

from pathlib import Path

import pytest

from aigc_gateway.errors import UserError
from aigc_gateway.gpu import Gpu
from aigc_gateway.gpu.inventory import merge
from aigc_gateway.settings import Settings

FOUND = [
    Gpu("GPU-1111", "local", 0, "rtx4090", 24.0, "local", 1, 0.0),
    Gpu("GPU-2222", "local", 1, "rtx4090", 24.0, "local", 1, 0.0),
    Gpu("GPU-3333", "local", 2, "a100", 80.0, "local", 1, 0.0),
]


def settings(tmp_path: Path, **values: object) -> Settings:
    return Settings(dev=True, data_dir=tmp_path, **values)  # type: ignore[arg-type]


def test_declared_entries_annotate_discovered_cards_and_add_others(tmp_path: Path) -> None:
    merged = merge(
        FOUND,
        settings(
            tmp_path,
            gpu_pool="lab",
            gpu_pool_rank=1,
            gpu_prices={"a100": 1.5},
            gpus=[
                {
                    "id": "GPU-2222",
                    "pool": "onprem-fast",
                    "pool_rank": 0,
                    "price_per_hour": 0.2,
                    "labels": {"rack": "r7"},
                    "cordoned": True,
                },
                {
                    "id": "GPU-cloud",
                    "host": "cloud-1",
                    "type": "h100",
                    "memory_gib": 80,
                    "pool": "cloud",
                    "pool_rank": 2,
                    "price_per_hour": 3,
                },
            ],
        ),
    )
    assert [(g.id, g.pool, g.pool_rank, g.price_per_hour) for g in merged] == [
        ("GPU-1111", "lab", 1, 0.0),
        ("GPU-2222", "onprem-fast", 0, 0.2),
        ("GPU-3333", "lab", 1, 1.5),
        ("GPU-cloud", "cloud", 2, 3.0),
    ]
    annotated = merged[1]
    # What NVML measured stays; what the admin said is added.
    assert (annotated.type, annotated.memory_gib, annotated.index) == ("rtx4090", 24.0, 1)
    assert annotated.cordoned and annotated.labels == (("rack", "r7"),)


def test_an_undiscovered_card_needs_its_type_and_memory(tmp_path: Path) -> None:
    with pytest.raises(UserError) as error:
        merge(FOUND, settings(tmp_path, gpus=[{"id": "GPU-typo"}]))
    assert "gpus[0] (GPU-typo)" in error.value.message and "`type` and `memory_gib`" in (
        error.value.message
    )

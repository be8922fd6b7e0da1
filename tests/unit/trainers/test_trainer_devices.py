"""Tests for GPU pinning of worker children and device selection."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainers.devices import pin_gpu, supports_bf16, training_device

REPO_ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize(("child_index", "expected"), [(0, "0"), (1, "1"), (2, "0"), (3, "1")])
def test_pin_gpu_cycles_through_clara_gpu_ids(child_index: int, expected: str) -> None:
    environ = {"CLARA_GPU_IDS": "0,1", "CUDA_VISIBLE_DEVICES": "5,6,7"}
    assert pin_gpu(child_index, environ) == expected
    assert environ == {"CLARA_GPU_IDS": "0,1", "CUDA_VISIBLE_DEVICES": expected}


def test_pin_gpu_ignores_spaces_and_empty_items() -> None:
    environ = {"CLARA_GPU_IDS": " 0, 1 ,,3 "}
    assert [pin_gpu(index, environ) for index in range(4)] == ["0", "1", "3", "0"]


def test_pin_gpu_falls_back_to_cuda_visible_devices() -> None:
    environ = {"CUDA_VISIBLE_DEVICES": "2,3"}
    assert pin_gpu(1, environ) == "3"
    assert environ == {"CUDA_VISIBLE_DEVICES": "3"}


@pytest.mark.parametrize("environ", [{}, {"CLARA_GPU_IDS": ""}, {"CUDA_VISIBLE_DEVICES": ""}, {"PATH": "/bin"}])
def test_pin_gpu_without_ids_changes_nothing(environ: dict[str, str]) -> None:
    before = dict(environ)
    assert pin_gpu(0, environ) is None
    assert environ == before


def test_pin_gpu_rejects_a_negative_child_index() -> None:
    with pytest.raises(ValueError):
        pin_gpu(-1, {"CLARA_GPU_IDS": "0"})


def test_devices_module_does_not_import_torch() -> None:
    code = "import sys, trainers.devices; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_training_device_matches_cuda_availability() -> None:
    assert training_device() == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only answer")
def test_no_bf16_without_cuda() -> None:
    assert supports_bf16() is False

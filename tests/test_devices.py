"""Device policy: the names a job accepts, and what they mean on this machine."""

from __future__ import annotations

import pytest
import torch

from onecomp.config import build_job_config
from onecomp.devices import resolve_compute_dtype, resolve_device
from onecomp.errors import OneCompError


def test_cpu_and_auto() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "mps:0", "tpu"])
def test_unknown_devices_are_one_line_errors(name: str) -> None:
    with pytest.raises(OneCompError, match="cpu, cuda or cuda:N"):
        resolve_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
def test_cuda_without_a_gpu(name: str) -> None:
    with pytest.raises(OneCompError, match="no CUDA device is available"):
        resolve_device(name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_gpu_index_past_the_last_is_refused() -> None:
    with pytest.raises(OneCompError, match="numbered from 0"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_compute_dtype_follows_the_hardware() -> None:
    cpu = torch.device("cpu")
    assert resolve_compute_dtype("auto", cpu, {"bf16_cpu": True}) == torch.bfloat16
    assert resolve_compute_dtype("auto", cpu, {"bf16_cpu": False}) == torch.float32
    assert resolve_compute_dtype("float32", cpu, {"bf16_cpu": True}) == torch.float32


def test_job_config_takes_a_gpu_index_and_the_index_is_not_in_the_fingerprint() -> None:
    base = {"model": "m", "output": "o"}
    one, zero = build_job_config({**base, "device": "cuda:1"}), build_job_config({**base, "device": "cuda"})
    assert one.device == "cuda:1"
    assert one.result_fingerprint_fields() == zero.result_fingerprint_fields()
    assert one.for_device("cuda:1").calib.seqlen == 2048 and one.for_device("cpu").calib.seqlen == 512
    with pytest.raises(OneCompError, match="device"):
        build_job_config({**base, "device": "gpu"})

"""Device selection and mixed precision: the CUDA and MPS paths are chosen when (mocked) hardware is there."""

import pytest
import torch

from lmkit import device as dev


def test_auto_device_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert dev.auto_device().type == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert dev.auto_device().type == "mps"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert dev.auto_device().type == "cpu"


def test_cuda_requested_without_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available"):
        dev.auto_device("cuda")


def test_bf16_autocast_only_on_capable_cuda(monkeypatch):
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert dev.autocast_dtype(cuda) is torch.bfloat16
    assert dev.autocast_dtype(cuda, "float32") is None
    assert dev.autocast_dtype(cpu) is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert dev.autocast_dtype(cuda) is None
    with pytest.raises(ValueError, match="bf16"):
        dev.autocast_dtype(cpu, "bfloat16")
    with pytest.raises(ValueError, match="float16"):
        dev.autocast_dtype(cpu, "float16")


def test_autocast_context_is_a_noop_without_dtype():
    x = torch.ones(2, 2)
    with dev.autocast(torch.device("cpu"), None):
        assert (x @ x).dtype == torch.float32
    with dev.autocast(torch.device("cpu"), torch.bfloat16):
        assert (x @ x).dtype == torch.bfloat16


def test_peak_flops_known_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "NVIDIA H100 80GB HBM3")
    assert dev.peak_flops(torch.device("cuda")) == 989e12
    assert dev.peak_flops(torch.device("cpu")) is None


def test_not_distributed_without_torchrun(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info, device = dev.init_distributed("cpu")
    assert (info.rank, info.world_size, info.is_main, info.enabled) == (0, 1, True, False)
    assert device.type == "cpu"

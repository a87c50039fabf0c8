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


def test_adamw_is_fused_on_cuda_and_cpu():
    from lmkit import GPT, GPTConfig, TrainConfig
    from lmkit.trainer import make_optimizer

    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=16))
    cfg = TrainConfig(learning_rate=2e-3, weight_decay=0.05)
    cuda = make_optimizer(model, cfg, torch.device("cuda"))  # built on CPU tensors; only the choice is checked
    assert cuda.defaults["fused"] is True
    assert make_optimizer(model, cfg, torch.device("cpu")).defaults["fused"] is True
    assert not make_optimizer(model, cfg, torch.device("mps")).defaults["fused"]  # PyTorch's default there
    assert [g["weight_decay"] for g in cuda.param_groups] == [0.05, 0.0] and cuda.defaults["lr"] == 2e-3


def test_batches_go_through_pinned_memory_on_cuda_only(monkeypatch):
    import numpy as np

    from lmkit.data import TokenDataset

    calls = []
    real_to = torch.Tensor.to

    def fake_to(self, device, *args, **kwargs):
        if torch.device(device).type == "cuda":  # no GPU here: record the copy instead of making it
            calls.append(("to", kwargs.get("non_blocking", False)))
            return self
        return real_to(self, device, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: calls.append(("pin", None)) or self)
    monkeypatch.setattr(torch.Tensor, "to", fake_to)
    data = TokenDataset(np.arange(100), block_size=8)
    data.batch(4, torch.Generator().manual_seed(0), "cpu")
    assert calls == []
    x, y = data.batch(4, torch.Generator().manual_seed(0), "cuda")
    assert calls == [("pin", None), ("to", True), ("pin", None), ("to", True)]
    assert torch.equal(x[:, 1:], y[:, :-1])


def test_enable_tf32_lets_fp32_matmuls_use_tensor_cores():
    precision, cudnn = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    try:
        dev.enable_tf32()
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:  # the flags are process-wide: put them back for the other tests
        torch.set_float32_matmul_precision(precision)
        torch.backends.cudnn.allow_tf32 = cudnn
    assert torch.get_float32_matmul_precision() == precision and not torch.backends.cuda.matmul.allow_tf32

"""Device policy on simulated machines (CUDA with/without bf16, MPS with low/high RAM, CPU)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from shoelib import device as dev
from shoelib.device import DeviceError, choose_policy

GB = 1024**3


@pytest.fixture
def machine(monkeypatch):
    """Simulate a machine: machine(cuda=True, bf16=False, mps=False, ram_gb=16)."""

    def simulate(cuda: bool = False, bf16: bool = False, mps: bool = False,
                 ram_gb: float = 16) -> None:
        monkeypatch.setattr(dev, "cuda_available", lambda: cuda)
        monkeypatch.setattr(dev, "cuda_bf16_supported", lambda: cuda and bf16)
        monkeypatch.setattr(dev, "mps_available", lambda: mps)
        monkeypatch.setattr(dev, "system_memory_bytes", lambda: int(ram_gb * GB))

    return simulate


def test_auto_prefers_cuda_with_bf16_where_native(machine):
    machine(cuda=True, bf16=True, mps=True)
    policy = choose_policy()
    assert (policy.device, policy.dtype, policy.mixed_precision) == ("cuda", torch.bfloat16, "bf16")
    assert not policy.attention_slicing and policy.warnings == ()
    assert "bfloat16" in policy.reason


def test_cuda_without_bf16_uses_float16(machine):
    machine(cuda=True, bf16=False)
    policy = choose_policy("auto")
    assert (policy.device, policy.dtype, policy.mixed_precision) == ("cuda", torch.float16, "fp16")
    assert policy.is_half


@pytest.mark.parametrize(("ram_gb", "slicing"), [(16, True), (32, True), (64, False), (96, False)])
def test_mps_is_float32_with_attention_slicing_below_64_gb(machine, ram_gb, slicing):
    machine(mps=True, ram_gb=ram_gb)
    policy = choose_policy()
    assert (policy.device, policy.dtype, policy.mixed_precision) == ("mps", torch.float32, "no")
    assert policy.attention_slicing is slicing
    assert "NaN" in policy.reason  # the reason names the float16 failure it avoids
    assert policy.total_memory_bytes == ram_gb * GB


def test_total_memory_parameter_overrides_the_machine(machine):
    machine(mps=True, ram_gb=16)
    assert not choose_policy(total_memory_bytes=128 * GB).attention_slicing
    assert choose_policy(total_memory_bytes=8 * GB).attention_slicing


def test_cpu_fallback_is_float32(machine):
    machine()
    policy = choose_policy()
    assert (policy.device, policy.dtype, policy.attention_slicing) == ("cpu", torch.float32, False)
    assert "no CUDA or MPS" in policy.reason


def test_explicit_device_overrides_auto(machine):
    machine(cuda=True, bf16=True, mps=True)
    assert choose_policy("cpu").device == "cpu"
    assert choose_policy("MPS").device == "mps"


@pytest.mark.parametrize("name", ["fp16", "float16", "half", "torch.float16", torch.float16])
def test_dtype_spellings(machine, name):
    machine(cuda=True)
    assert choose_policy("cuda", name).dtype == torch.float16


@pytest.mark.parametrize(("device", "dtype", "words"), [
    ("mps", "float16", "NaN"),
    ("cpu", "float16", "slow"),
    ("mps", "bfloat16", "macOS 14"),
])
def test_unsafe_choice_is_allowed_with_a_warning(machine, device, dtype, words):
    machine(mps=True)
    with pytest.warns(UserWarning, match=words):
        policy = choose_policy(device, dtype)
    assert policy.device == device and policy.dtype == dev.parse_dtype(dtype)
    assert len(policy.warnings) == 1 and words in policy.warnings[0]


def test_bf16_on_cuda_without_native_support_warns(machine):
    machine(cuda=True, bf16=False)
    with pytest.warns(UserWarning, match="no native bfloat16"):
        assert choose_policy("cuda", "bf16").dtype == torch.bfloat16


def test_safe_explicit_choice_has_no_warning(machine, recwarn):
    machine(cuda=True, bf16=True)
    assert choose_policy("cuda", "float32").warnings == ()
    assert choose_policy("cuda", "float32").mixed_precision == "no"
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)]


@pytest.mark.parametrize("name", ["gpu", "cuda:0", "tpu", ""])
def test_unknown_device_names_the_value_and_the_options(machine, name):
    machine()
    with pytest.raises(DeviceError, match=rf"device={name!r} is unknown; use auto, cuda, mps or cpu"):
        choose_policy(name)


@pytest.mark.parametrize(("name", "hint"), [("cuda", "no CUDA GPU"), ("mps", "Apple silicon")])
def test_unavailable_device_is_an_error(machine, name, hint):
    machine()
    with pytest.raises(DeviceError, match=hint):
        choose_policy(name)


def test_device_error_is_a_value_error():
    assert issubclass(DeviceError, ValueError)


def test_unknown_dtype(machine):
    machine()
    with pytest.raises(DeviceError, match=r"dtype='int8' is unknown"):
        choose_policy("cpu", "int8")


def test_this_machine_really_is_probed():
    """Unpatched, the policy agrees with what torch reports."""
    policy = choose_policy()
    expected = "cuda" if torch.cuda.is_available() else (
        "mps" if torch.backends.mps.is_available() else "cpu")
    assert policy.device == expected
    assert policy.as_dict()["dtype"] == policy.dtype_name


def test_cpu_generator_is_reproducible_and_independent_of_global_seed():
    torch.manual_seed(0)
    a = torch.randn(4, generator=dev.cpu_generator(42))
    torch.manual_seed(1)
    b = torch.randn(4, generator=dev.cpu_generator(42))
    assert torch.equal(a, b)
    assert not torch.equal(a, torch.randn(4, generator=dev.cpu_generator(43)))


def test_initial_latents_match_diffusers_randn_tensor_and_keep_values_across_dtypes():
    from diffusers.utils.torch_utils import randn_tensor

    shape = (1, 4, 8, 8)
    ours = dev.initial_latents(7, shape, "cpu", torch.float32)
    reference = randn_tensor(shape, generator=dev.cpu_generator(7), device=torch.device("cpu"),
                             dtype=torch.float32)
    assert torch.equal(ours, reference)
    half = dev.initial_latents(7, shape, "cpu", torch.bfloat16)
    assert half.dtype == torch.bfloat16
    assert torch.equal(half, ours.to(torch.bfloat16))  # same draw, only rounded


def test_measure_peak_memory_sees_a_large_allocation():
    # A fresh interpreter: in a long test process the allocator can serve 64 MiB from heap
    # pages freed (but still resident) by earlier tests, and RSS would not move at all.
    script = """
import json, time, torch
import shoelib.device as dev
with dev.measure_peak_memory("cpu", interval_s=0.005) as mem:
    block = torch.ones(64 * 1024**2 // 4)  # 64 MiB
    block.add_(1)  # touch every page
    time.sleep(0.3)  # let the sampler see it, even on a loaded machine
    del block
print(json.dumps({**mem.as_dict(), "lifetime_peak": dev.peak_memory_bytes("cpu")}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, check=True)
    mem = json.loads(done.stdout.strip().splitlines()[-1])
    assert mem["source"] == "process_rss"
    assert mem["added_bytes"] >= 48 * 1024**2
    assert mem["peak_bytes"] >= mem["start_bytes"] > 0
    assert mem["lifetime_peak"] >= mem["peak_bytes"] * 0.99  # lifetime peak includes it


# --- rules that follow from the policy

@pytest.mark.parametrize(("dtype", "fallback"), [(torch.float16, torch.float32),
                                                 (torch.bfloat16, torch.float32),
                                                 (torch.float32, None)])
def test_failed_half_precision_images_fall_back_to_float32_only(dtype, fallback):
    assert dev.fallback_dtype(dtype) is fallback


@pytest.mark.parametrize(("kind", "batch"), [({"mps": True}, 1), ({"cuda": True}, 8), ({}, 8)])
def test_generation_batches_are_one_image_on_mps_only(machine, kind, batch):
    machine(**kind)
    assert choose_policy().batch_size(8) == batch


@pytest.mark.parametrize(("kind", "dtype"), [({"cuda": True, "bf16": True}, "auto"),
                                             ({"cuda": True}, "float16"), ({"mps": True}, "auto")])
def test_caching_encoders_run_in_float32_whatever_the_training_dtype(machine, kind, dtype):
    machine(**kind)
    policy = choose_policy("auto", dtype)
    assert policy.encoder_dtype == torch.float32


def test_each_process_of_a_cuda_launch_gets_its_own_gpu(machine):
    machine(cuda=True, bf16=True)
    policy = choose_policy()
    assert dev.for_process(policy, 4, "cuda:2").device == "cuda:2"
    assert dev.for_process(policy, 4, "cuda:2").dtype == policy.dtype
    assert dev.for_process(policy, 1, "cuda:0") == policy  # alone: unchanged
    machine()
    cpu = choose_policy()
    assert dev.for_process(cpu, 4, "cpu") == cpu


def test_a_process_gpu_counts_as_cuda(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: calls.append("sync"))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda: 123)
    dev.synchronize("cuda:1")
    assert calls == ["sync"] and dev.peak_memory_bytes("cuda:1") == 123

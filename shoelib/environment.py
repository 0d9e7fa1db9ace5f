"""What this machine offers the project: versions, memory, disk, and a few live checks.

`environment_report` gathers everything notebook 03 shows and writes to env.json. Missing
optional pieces are reported as warnings, never raised: a laptop without xformers or a GPU
is a supported machine.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil
import torch

from shoelib.device import DevicePolicy, cpu_generator, synchronize
from shoelib.paths import resolve

# The libraries a run depends on, and ones that only add features or speed.
CORE_PACKAGES = ("torch", "diffusers", "transformers", "peft", "accelerate", "safetensors",
                 "huggingface-hub")
# Optional: the prompt playground, training curves, evaluation metrics. (xformers is not
# listed: torch's own scaled_dot_product_attention does its job.)
OPTIONAL_PACKAGES = ("ipywidgets", "tensorboard", "torchmetrics")

# Largest relative error of a 256x256 matmul we accept, per dtype: float32 differs from the
# CPU only by summation order; half precision keeps 11 (fp16) or 8 (bf16) mantissa bits.
MATMUL_TOLERANCE = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 3e-2}


def package_versions(names: tuple[str, ...]) -> dict[str, str | None]:
    """{distribution name: installed version or None}."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def memory_summary(device: str) -> dict:
    """System RAM, and the accelerator's own memory where it has one (bytes)."""
    ram = psutil.virtual_memory()
    summary = {"ram_total_bytes": ram.total, "ram_available_bytes": ram.available,
               "process_rss_bytes": psutil.Process().memory_info().rss}
    if device == "cuda":
        free, total = torch.cuda.mem_get_info()
        summary.update(device_total_bytes=total, device_free_bytes=free,
                       device_name=torch.cuda.get_device_name())
    elif device == "mps":  # unified memory: the GPU shares system RAM up to this limit
        summary.update(device_total_bytes=torch.mps.recommended_max_memory(),
                       device_name=f"Apple {platform.machine()} (unified memory)")
    return summary


def disk_free_bytes(path: str | Path) -> dict:
    """Free and total bytes of the file system that holds `path` (or would, once created).

    A relative `path` is relative to the project root, like every path parameter.
    """
    probe = resolve(path).resolve()
    while not probe.exists():  # the output folder may not exist yet: ask its nearest parent
        probe = probe.parent
    usage = shutil.disk_usage(probe)
    return {"disk_path": str(probe), "disk_free_bytes": usage.free,
            "disk_total_bytes": usage.total}


@dataclass(frozen=True)
class MatmulCheck:
    """A matmul on the chosen device compared with float32 on the CPU."""

    device: str
    dtype: str
    size: int
    max_relative_error: float
    tolerance: float
    seconds: float
    ok: bool


def matmul_check(policy: DevicePolicy, size: int = 256) -> MatmulCheck:
    """Multiply two seeded random matrices on `policy.device` in `policy.dtype`.

    Catches a broken driver or a dtype the device computes wrongly before any model is
    loaded. The error is relative to the largest entry of the CPU float32 result.
    """
    a = torch.randn(size, size, generator=cpu_generator(0))
    b = torch.randn(size, size, generator=cpu_generator(1))
    reference = a @ b
    synchronize(policy.device)
    t0 = time.perf_counter()
    result = a.to(policy.device, policy.dtype) @ b.to(policy.device, policy.dtype)
    synchronize(policy.device)
    seconds = time.perf_counter() - t0
    error = float((result.float().cpu() - reference).abs().max() / reference.abs().max())
    tolerance = MATMUL_TOLERANCE[policy.dtype]
    return MatmulCheck(policy.device, policy.dtype_name, size, error, tolerance, seconds,
                       ok=bool(error <= tolerance))


def attention_check(policy: DevicePolicy) -> dict:
    """Is torch's fused scaled_dot_product_attention there, and does it match the formula?"""
    sdpa = getattr(torch.nn.functional, "scaled_dot_product_attention", None)
    if sdpa is None:
        return {"sdpa_available": False, "sdpa_matches_reference": None}
    q, k, v = (torch.randn(1, 2, 16, 8, generator=cpu_generator(i)) for i in range(3))
    expected = torch.softmax(q @ k.transpose(-1, -2) / 8**0.5, dim=-1) @ v
    got = sdpa(*(t.to(policy.device, policy.dtype) for t in (q, k, v))).float().cpu()
    return {"sdpa_available": True,
            "sdpa_matches_reference": bool(torch.allclose(got, expected,
                                                          atol=MATMUL_TOLERANCE[policy.dtype] * 10))}


def gradient_checkpointing_available() -> bool:
    """diffusers' UNet supports activation checkpointing (trades compute for memory)."""
    from diffusers import UNet2DConditionModel

    return bool(getattr(UNet2DConditionModel, "_supports_gradient_checkpointing", False))


def environment_report(policy: DevicePolicy, output_root: str | Path) -> dict:
    """Everything env.json records: the policy, versions, memory, disk, CPU, live checks.

    Returns:
        A JSON-ready dict; `warnings` lists what is missing or suspicious (never raised).
    """
    versions = package_versions(CORE_PACKAGES + OPTIONAL_PACKAGES)
    matmul = matmul_check(policy)
    attention = attention_check(policy)
    warnings = list(policy.warnings)
    warnings += [f"{name} is not installed (optional)" for name in OPTIONAL_PACKAGES
                 if versions[name] is None]
    warnings += [f"{name} is not installed (required)" for name in CORE_PACKAGES
                 if versions[name] is None]
    if not matmul.ok:
        warnings.append(f"matmul on {policy.device}/{policy.dtype_name} is off by "
                        f"{matmul.max_relative_error:.2e} (> {matmul.tolerance}); the device "
                        "or driver computes wrongly")
    if not attention["sdpa_available"]:
        warnings.append("torch has no scaled_dot_product_attention: attention is slower")
    checkpointing = gradient_checkpointing_available()
    if not checkpointing:
        warnings.append("gradient checkpointing is unavailable: training needs more memory")
    return {
        "device": policy.device,
        "dtype": policy.dtype_name,
        "reason": policy.reason,
        "policy": policy.as_dict(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "versions": versions,
        "memory": memory_summary(policy.device),
        "disk": disk_free_bytes(output_root),
        "cpu": {"logical_cores": os.cpu_count(), "torch_threads": torch.get_num_threads()},
        "matmul_check": asdict(matmul),
        "attention": attention,
        "gradient_checkpointing": checkpointing,
        "warnings": warnings,
    }

"""The only home of device and dtype policy: which accelerator, which precision, and why.

Decisions, in one table (`choose_policy`):

| device | default dtype | why |
|---|---|---|
| cuda   | bfloat16 where the GPU has it natively, else float16 | half the memory, tensor cores |
| mps    | float32 | float16 on Apple MPS gave NaN latents -> black images |
| cpu    | float32 | half precision on CPU is slow and some kernels are missing |

and the rules that follow from it:

- a half-precision image that fails its check is generated again in float32
  (`fallback_dtype`); a float32 failure is final;
- generation batches are 1 image on MPS, where batched calls misbehave (`DevicePolicy.batch_size`);
- the VAE and text encoder that encode the training set once run in float32 whatever the
  training precision: SD's VAE overflows in float16 (`DevicePolicy.encoder_dtype`);
- under a multi-process launch every process uses its own GPU, cuda:<local rank>
  (`for_process`).

Everything that asks "is CUDA/MPS/bf16 there, how much RAM" goes through the small
`*_available` / `system_memory_bytes` functions below, so tests can simulate any machine.
Seeded noise is drawn on a CPU generator and moved to the device: the same seed gives the
same starting latents on every device and dtype.
"""

from __future__ import annotations

import gc
import resource
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import psutil
import torch

from shoelib import checks

DEVICES = ("cuda", "mps", "cpu")

# diffusers' MPS guide: "We recommend using attention slicing on computers with < 64 GB RAM".
ATTENTION_SLICING_BELOW_BYTES = 64 * 1024**3

_DTYPE_NAMES = {
    "float32": torch.float32, "fp32": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}

# accelerate's `mixed_precision` for each weight dtype.
_MIXED_PRECISION = {torch.float32: "no", torch.float16: "fp16", torch.bfloat16: "bf16"}


class DeviceError(ValueError):
    """An unknown or unavailable device, or an unknown dtype, requested by the user."""


@dataclass(frozen=True)
class DevicePolicy:
    """Where the model runs and in which precision.

    Attributes:
        device: "cuda", "mps" or "cpu".
        dtype: dtype of the model weights (inference; the frozen parts when training).
        reason: one sentence saying why this device and dtype were chosen.
        attention_slicing: call `pipe.enable_attention_slicing()` (MPS below 64 GB RAM).
        warnings: known risks of an explicitly requested choice (e.g. float16 on MPS).
        mixed_precision: the matching accelerate setting: "fp16", "bf16" or "no".
        total_memory_bytes: system RAM the decision was based on.
    """

    device: str
    dtype: torch.dtype
    reason: str
    attention_slicing: bool
    warnings: tuple[str, ...] = ()
    mixed_precision: str = "no"
    total_memory_bytes: int = 0

    @property
    def dtype_name(self) -> str:
        """'float32', 'float16' or 'bfloat16' (for JSON and tables)."""
        return str(self.dtype).removeprefix("torch.")

    @property
    def is_half(self) -> bool:
        return self.dtype in (torch.float16, torch.bfloat16)

    @property
    def encoder_dtype(self) -> torch.dtype:
        """dtype of the VAE and text encoder that encode the training set once: float32
        whatever `dtype` is (SD's VAE overflows in float16; they run once, so speed does not
        matter)."""
        return torch.float32

    def batch_size(self, requested: int) -> int:
        """Images per generation call: `requested`, but 1 on MPS (batched calls misbehave there)."""
        return 1 if self.device == "mps" else int(requested)

    def as_dict(self) -> dict:
        """JSON-friendly view (dtype as its name)."""
        return {
            "device": self.device,
            "dtype": self.dtype_name,
            "reason": self.reason,
            "attention_slicing": self.attention_slicing,
            "warnings": list(self.warnings),
            "mixed_precision": self.mixed_precision,
            "total_memory_bytes": self.total_memory_bytes,
        }


# --- what this machine has (monkeypatched in tests)

def cuda_available() -> bool:
    return torch.cuda.is_available()


def mps_available() -> bool:
    return torch.backends.mps.is_available()


def cuda_bf16_supported() -> bool:
    """Native bfloat16 only: emulated bf16 on pre-Ampere GPUs is slower than float16."""
    return cuda_available() and torch.cuda.is_bf16_supported(including_emulation=False)


def system_memory_bytes() -> int:
    """Total system RAM (on Apple silicon this is also the GPU's memory)."""
    return psutil.virtual_memory().total


# --- the decision

def parse_dtype(dtype: str | torch.dtype) -> torch.dtype | None:
    """'fp16' / 'float16' / torch.float16 -> torch.float16; 'auto' -> None.

    Raises:
        DeviceError: for any other name.
    """
    if isinstance(dtype, torch.dtype):
        if dtype not in _MIXED_PRECISION:
            raise DeviceError(f"dtype={dtype} is not supported; use float32, float16 or bfloat16")
        return dtype
    name = str(dtype).strip().lower().removeprefix("torch.")
    if name == "auto":
        return None
    if name not in _DTYPE_NAMES:
        raise DeviceError(f"dtype={dtype!r} is unknown; use auto, float32, float16 or bfloat16")
    return _DTYPE_NAMES[name]


def _pick_device(device: str) -> tuple[str, str]:
    """(device, reason) for a requested name; raises DeviceError if unknown or unavailable."""
    name = str(device).strip().lower()
    if name == "auto":
        if cuda_available():
            return "cuda", "CUDA GPU found"
        if mps_available():
            return "mps", "Apple MPS found (no CUDA)"
        return "cpu", "no CUDA or MPS accelerator found"
    if name not in DEVICES:
        raise DeviceError(f"device={device!r} is unknown; use auto, cuda, mps or cpu")
    if name == "cuda" and not cuda_available():
        raise DeviceError("device='cuda' requested but torch sees no CUDA GPU "
                          f"(torch {torch.__version__}); use device='auto' or 'cpu', "
                          "or install a CUDA build of torch")
    if name == "mps" and not mps_available():
        raise DeviceError("device='mps' requested but MPS is not available (needs Apple "
                          "silicon and macOS 12.3+); use device='auto' or 'cpu'")
    return name, f"device={name} requested"


def _default_dtype(device: str) -> tuple[torch.dtype, str]:
    if device == "cuda":
        if cuda_bf16_supported():
            return torch.bfloat16, "bfloat16: native on this GPU, as fast as float16 and no overflow"
        return torch.float16, "float16: this GPU has no native bfloat16"
    if device == "mps":
        return torch.float32, "float32: float16 on MPS gave NaN latents (black images)"
    return torch.float32, "float32: half precision on CPU is slow and partly unsupported"


def _dtype_risks(device: str, dtype: torch.dtype) -> tuple[str, ...]:
    """Known problems of an explicitly requested (device, dtype) pair."""
    if device == "mps" and dtype == torch.float16:
        return ("float16 on MPS produced NaN latents and black images for Stable Diffusion; "
                "use float32 (dtype='auto')",)
    if device == "mps" and dtype == torch.bfloat16:
        return ("bfloat16 on MPS needs macOS 14+ and is untested here; use float32 (dtype='auto')",)
    if device == "cpu" and dtype == torch.float16:
        return ("float16 on CPU is slow and some kernels are missing; use float32 (dtype='auto')",)
    if device == "cpu" and dtype == torch.bfloat16:
        return ("bfloat16 on CPU is slower than float32 unless the CPU has AMX/AVX512-BF16",)
    if device == "cuda" and dtype == torch.bfloat16 and not cuda_bf16_supported():
        return ("this GPU has no native bfloat16 (emulated, slow); use float16 (dtype='auto')",)
    return ()


def choose_policy(device: str = "auto", dtype: str | torch.dtype = "auto", *,
                  total_memory_bytes: int | None = None) -> DevicePolicy:
    """Decide device, dtype and attention slicing: cuda -> mps -> cpu.

    Args:
        device: "auto" (first available of cuda, mps, cpu) or one of them explicitly.
        dtype: "auto" (the safe default for the device) or float32/float16/bfloat16
            (also fp32/fp16/bf16 or a torch.dtype). A known-unsafe choice is allowed
            and recorded in `warnings`.
        total_memory_bytes: system RAM to decide attention slicing on; default: this machine's.

    Returns:
        The policy, with a one-line `reason`.

    Raises:
        DeviceError: unknown device or dtype name, or a device this machine does not have.
    """
    wanted_dtype = parse_dtype(dtype)
    chosen, device_reason = _pick_device(device)
    if wanted_dtype is None:
        chosen_dtype, dtype_reason = _default_dtype(chosen)
        risks: tuple[str, ...] = ()
    else:
        chosen_dtype, dtype_reason = wanted_dtype, f"{_name(wanted_dtype)} requested"
        risks = _dtype_risks(chosen, wanted_dtype)
    for risk in risks:
        warnings.warn(risk, UserWarning, stacklevel=2)
    memory = system_memory_bytes() if total_memory_bytes is None else int(total_memory_bytes)
    slicing = chosen == "mps" and memory < ATTENTION_SLICING_BELOW_BYTES
    reason = f"{chosen}: {device_reason}; {dtype_reason}"
    if slicing:
        reason += f"; attention slicing on ({memory / 1024**3:.0f} GB RAM < 64 GB)"
    return DevicePolicy(
        device=chosen,
        dtype=chosen_dtype,
        reason=reason,
        attention_slicing=slicing,
        warnings=risks,
        mixed_precision=_MIXED_PRECISION[chosen_dtype],
        total_memory_bytes=memory,
    )


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def set_cpu_threads(cpu_threads: int) -> None:
    """The notebooks' `cpu_threads` parameter: 0 keeps torch's default, n > 0 uses n threads."""
    if checks.whole_number(cpu_threads, "cpu_threads", 0, 1, DeviceError):
        torch.set_num_threads(cpu_threads)


def fallback_dtype(dtype: torch.dtype) -> torch.dtype | None:
    """The precision to retry a failed (NaN/black/flat) image in: float32 after float16 or
    bfloat16, whose activations can overflow; None after float32, where a retry would fail
    the same way."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else None


def for_process(policy: DevicePolicy, num_processes: int, process_device: str) -> DevicePolicy:
    """The policy of one process of a launch.

    Under a multi-process CUDA launch each process runs on its own GPU (`process_device`,
    cuda:<local rank>, as accelerate assigns it) instead of all piling onto cuda:0. One
    process, or a non-CUDA device, keeps the policy as it is.
    """
    if num_processes > 1 and policy.device == "cuda":
        return replace(policy, device=str(process_device))
    return policy


# --- seeded noise

def cpu_generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with `seed`: the same numbers on every machine and device."""
    return torch.Generator(device="cpu").manual_seed(int(seed))


# Ancestral samplers (Euler a, DDPM) add fresh noise at every step. It comes from its own
# stream, apart from the starting latents', so one seed reproduces both.
STEP_NOISE_SEED_OFFSET = 2**32


def step_noise_generator(seed: int) -> torch.Generator:
    """The CPU generator for a sampler's per-step noise of the image with this seed."""
    return cpu_generator(int(seed) + STEP_NOISE_SEED_OFFSET)


def initial_latents(seed: int, shape: tuple[int, ...], device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard-normal starting latents drawn in float32 on CPU, then moved to the device.

    Drawing in float32 (not the model dtype) keeps the noise identical across devices and
    when a half-precision run is retried in float32.

    Args:
        seed: the image's seed.
        shape: (batch, 4, height // 8, width // 8) for Stable Diffusion.
        device: where the latents go (e.g. `policy.device`).
        dtype: the model's dtype (e.g. `policy.dtype`).
    """
    noise = torch.randn(shape, generator=cpu_generator(seed), dtype=torch.float32)
    return noise.to(device=device, dtype=dtype)


def _kind(device: str | torch.device) -> str:
    """The device type: cuda for both "cuda" and "cuda:1" (a process's own GPU, `for_process`)."""
    return torch.device(device).type


def synchronize(device: str) -> None:
    """Wait for queued GPU work, so a timer measures the work and not its launch."""
    if _kind(device) == "cuda":
        torch.cuda.synchronize()
    elif _kind(device) == "mps":
        torch.mps.synchronize()


# --- memory

def process_rss_bytes() -> int:
    return psutil.Process().memory_info().rss


def peak_memory_bytes(device: str) -> int:
    """Peak memory so far.

    cuda: the allocator's peak since the last `reset_peak_memory(device)`.
    mps: memory the Metal driver holds now (MPS keeps no peak counter).
    cpu: the process's lifetime peak RSS (the OS keeps it; it cannot be reset).
    """
    if _kind(device) == "cuda":
        return torch.cuda.max_memory_allocated()
    if _kind(device) == "mps":
        return torch.mps.driver_allocated_memory()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS: bytes; Linux: KiB


def current_memory_bytes(device: str) -> int:
    """Memory in use now: the device allocator on cuda/mps, the process RSS on cpu."""
    if _kind(device) == "cuda":
        return torch.cuda.memory_allocated()
    if _kind(device) == "mps":
        return torch.mps.driver_allocated_memory()
    return process_rss_bytes()


def free_memory(device: str | torch.device) -> None:
    """Collect garbage and hand the device allocator's cached blocks back (cuda, mps)."""
    gc.collect()
    if _kind(device) == "cuda":
        torch.cuda.empty_cache()
    elif _kind(device) == "mps":
        torch.mps.empty_cache()


def reset_peak_memory(device: str) -> None:
    """Start a new peak on cuda (after releasing cached blocks); frees caches elsewhere."""
    free_memory(device)
    if _kind(device) == "cuda":
        torch.cuda.reset_peak_memory_stats()


class PeakMemory:
    """Result of `measure_peak_memory`: filled in when the `with` block ends.

    Attributes:
        device: the device measured.
        source: "cuda_allocator", "mps_driver" or "process_rss".
        start_bytes: memory in use when the block began.
        peak_bytes: highest memory in use during the block (includes start_bytes).
    """

    def __init__(self, device: str, source: str, start_bytes: int) -> None:
        self.device = device
        self.source = source
        self.start_bytes = start_bytes
        self.peak_bytes = start_bytes

    @property
    def added_bytes(self) -> int:
        """How much the block added on top of what was in use before it."""
        return max(0, self.peak_bytes - self.start_bytes)

    def as_dict(self) -> dict:
        return {"device": self.device, "source": self.source, "start_bytes": self.start_bytes,
                "peak_bytes": self.peak_bytes, "added_bytes": self.added_bytes}


def _sample_peak(meter: PeakMemory, stop: threading.Event, interval_s: float) -> None:
    while not stop.is_set():
        meter.peak_bytes = max(meter.peak_bytes, current_memory_bytes(meter.device))
        stop.wait(interval_s)


@contextmanager
def measure_peak_memory(device: str, interval_s: float = 0.02) -> Iterator[PeakMemory]:
    """Measure the peak memory of a block of work.

    cuda uses the allocator's own peak counter. mps and cpu have none that can be reset,
    so a background thread samples current use every `interval_s` (a spike shorter than
    that can be missed).

    Usage:
        with measure_peak_memory("cpu") as mem:
            pipe(...)
        mem.peak_bytes
    """
    synchronize(device)
    if _kind(device) == "cuda":
        reset_peak_memory(device)
        meter = PeakMemory(device, "cuda_allocator", torch.cuda.memory_allocated())
        yield meter
        synchronize(device)
        meter.peak_bytes = max(meter.start_bytes, torch.cuda.max_memory_allocated())
        return
    source = "mps_driver" if _kind(device) == "mps" else "process_rss"
    meter = PeakMemory(device, source, current_memory_bytes(device))
    stop = threading.Event()
    sampler = threading.Thread(target=_sample_peak, args=(meter, stop, interval_s), daemon=True)
    sampler.start()
    try:
        yield meter
    finally:
        synchronize(device)
        stop.set()
        sampler.join()
        meter.peak_bytes = max(meter.peak_bytes, current_memory_bytes(device))

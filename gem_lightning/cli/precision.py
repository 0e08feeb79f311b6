"""``trainer.precision: auto``: the fastest precision that the machine and device compute natively.

A config cannot know the machine it will run on: ``bf16-mixed`` is about 3x faster than ``32-true``
on CPUs with AMX or AVX-512-bf16 and about 10x slower on those without (emulated), and GPUs before
Ampere have no bf16 at all. ``auto`` resolves when the trainer is built, where the accelerator is
known, and says once what it chose:

* CUDA GPUs: ``bf16-mixed`` where the GPU computes bf16 natively (Ampere and later), else ``16-mixed``;
* CPUs: ``bf16-mixed`` with AMX or AVX-512-bf16, else ``32-true``;
* other accelerators (MPS, TPU, ...): ``32-true``.

The trainer class :class:`AutoPrecisionTrainer` is Lightning's with ``auto`` added to the values its
``precision`` takes, so that LightningCLI parses ``--trainer.precision auto`` and configs saying it.
"""

from __future__ import annotations

import inspect
from typing import Any, Literal, Union

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.accelerators import Accelerator, CPUAccelerator, CUDAAccelerator, MPSAccelerator, XLAAccelerator
from lightning.pytorch.utilities import rank_zero_info

AUTO = "auto"
LIGHTNING_PRECISION = inspect.signature(Trainer.__init__).parameters["precision"].annotation
PrecisionSetting = Union[Literal["auto"], LIGHTNING_PRECISION]  # noqa: UP007 (a runtime value: the | of typing objects is not one)
"""What ``trainer.precision`` takes: Lightning's values, or ``auto``."""


class AutoPrecisionTrainer(Trainer):
    """Lightning's :class:`~lightning.pytorch.Trainer`, whose ``precision`` also takes ``auto``
    (resolved by :func:`auto_precision` for the ``accelerator`` given, and said once)."""

    def __init__(self, *, precision: PrecisionSetting = None, **kwargs: Any) -> None:
        if precision == AUTO:
            precision, reason = auto_precision(kwargs.get("accelerator", "auto"))
            rank_zero_info(f"trainer.precision auto -> {precision}: {reason}.")
        super().__init__(precision=precision, **kwargs)


def auto_precision(accelerator: str | Accelerator) -> tuple[str, str]:
    """The fastest native precision for ``accelerator`` on this machine, and why (a few words)."""
    device = device_kind(accelerator)
    if device == "cuda":
        if cuda_bf16_native():
            return "bf16-mixed", f"{torch.cuda.get_device_name()} computes bf16 natively"
        return "16-mixed", f"{torch.cuda.get_device_name()} has no native bf16 (before Ampere)"
    if device == "cpu":
        native = cpu_bf16_native()
        if native:
            return "bf16-mixed", "this CPU computes bf16 natively (AMX or AVX-512-bf16)"
        if native is None:
            return "32-true", f"torch {torch.__version__} cannot tell whether this CPU computes bf16 natively"
        return "32-true", "this CPU has no AMX or AVX-512-bf16: bf16 would be emulated, about 10x slower"
    return "32-true", f"no mixed precision is chosen for the {device} accelerator"


def device_kind(accelerator: str | Accelerator) -> str:
    """``cuda``, ``cpu`` or the accelerator's name: where a trainer given ``accelerator`` runs, as
    Lightning's ``auto`` picks (TPU, then MPS, then CUDA, then the CPU)."""
    if isinstance(accelerator, Accelerator):
        kinds = {CUDAAccelerator: "cuda", CPUAccelerator: "cpu", MPSAccelerator: "mps", XLAAccelerator: "tpu"}
        return next((kind for cls, kind in kinds.items() if isinstance(accelerator, cls)), type(accelerator).__name__)
    name = str(accelerator).lower()
    if name == AUTO:
        if XLAAccelerator.is_available():
            return "tpu"
        if MPSAccelerator.is_available():
            return "mps"
        return "cuda" if CUDAAccelerator.is_available() else "cpu"
    if name == "gpu":
        return "cuda" if CUDAAccelerator.is_available() else "mps" if MPSAccelerator.is_available() else "gpu"
    return name


def cuda_bf16_native() -> bool:
    """Whether the current CUDA GPU computes bf16 natively: ``torch.cuda.is_bf16_supported()``, which
    also says yes where bf16 is only emulated, and, on NVIDIA GPUs, Ampere (compute capability 8.0) or later."""
    return torch.cuda.is_bf16_supported() and (bool(torch.version.hip) or torch.cuda.get_device_capability() >= (8, 0))


def cpu_bf16_native() -> bool | None:
    """Whether this CPU computes bf16 natively (AVX-512-bf16 or AMX), as torch's kernels see it;
    None where torch cannot tell (before 2.11, which added ``torch.cpu.get_capabilities``)."""
    get_capabilities = getattr(torch.cpu, "get_capabilities", None)
    if get_capabilities is None:
        return None
    capabilities = get_capabilities()
    return bool(capabilities.get("avx512_bf16", False) or capabilities.get("amx_bf16", False))

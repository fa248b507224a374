"""What this machine's CPU can do that decides how torch work should run on it."""

from __future__ import annotations


def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AMX tiles or AVX512-BF16)."""
    import torch

    probes = (
        getattr(torch.cpu, "_is_amx_tile_supported", None),
        getattr(torch.cpu, "_is_avx512_bf16_supported", None),
    )
    return any(bool(probe()) for probe in probes if probe is not None)

"""What the GPU benchmarks share: device choice (CUDA, or Triton's CPU interpreter for --tiny checks), timing,
and kernel layers with random codes of a plan's shapes (latency does not depend on the values)."""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from qdit4sr_export.plugins.triton_env import prepare


def choose_device(interpret: bool) -> torch.device:
    """CUDA when present (unless --interpret); otherwise the CPU with the kernels interpreted. Call before
    anything imports triton (diffusers does)."""
    device = "cpu" if interpret or not torch.cuda.is_available() else "cuda"
    prepare(device)
    return torch.device(device)


def parse_args(doc: str, what: str, tiny_help: str, extra=None) -> tuple[argparse.Namespace, torch.device]:
    """--tiny / --interpret / --reps (and what ``extra(parser)`` adds), and the device (full-size runs need CUDA:
    ``what`` names them)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help=tiny_help)
    ap.add_argument("--interpret", action="store_true", help="Run the kernels in Triton's CPU interpreter.")
    ap.add_argument("--reps", type=int, default=None)
    if extra is not None:
        extra(ap)
    args = ap.parse_args()
    device = choose_device(args.interpret)
    if not args.tiny and device.type != "cuda":
        raise SystemExit(f"{what} needs a CUDA GPU; use --tiny to check the script on the CPU")
    return args, device


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU, Triton interpreter"


def time_ms(fn, device: torch.device, *, warmup: int = 3, reps: int = 10) -> float:
    """Median wall time of ``fn()`` in milliseconds (CUDA events on a GPU)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def random_specs(k: int, n: int, *, wbits: int, rank: int, block: tuple[int, int] | None, device: torch.device,
                 seed: int = 0, name: str = ""):
    """(ActivationSpec, WeightSpec) of one Q-DiT4SR layer (signed Hadamard, SVD-G ``rank``, SVD-L ``block``)
    with random stored codes, scales and branch factors of the engine set's layout."""
    from qdit4sr_export.plugins.activation_spec import ActivationSpec
    from qdit4sr_export.plugins.packing import stored_weight_bytes
    from qdit4sr_export.plugins.weight_spec import WeightSpec

    from qdit4sr_export.quant.hadamard import Rotation

    g = torch.Generator().manual_seed(seed)
    q = 2 ** (wbits - 1) - 1
    codes = stored_weight_bytes(torch.randint(-q, q + 1, (k, n), generator=g, dtype=torch.int8), wbits)
    rnd = lambda *shape, s=1.0: (torch.randn(*shape, generator=g) * s)
    v = rnd(n // block[0], k // block[1], block[1], s=block[1] ** -0.5) if block else None
    u = rnd(n // block[0], k // block[1], block[0], s=0.01) if block else None
    act = ActivationSpec(k, Rotation(k, seed=0), "gaussian", None, None, rnd(k, rank, s=k ** -0.5) if rank else None,
                         v, name=name)
    weight = WeightSpec(codes.to(device), (torch.rand(n, generator=g) * 0.01 + 1e-3).to(device), wbits, k, n, None,
                        rnd(rank, n, s=0.01).to(device) if rank else None, u.to(device) if u is not None else None,
                        rnd(n, s=0.01).to(device), name=name)
    return act, weight

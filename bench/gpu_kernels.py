"""Low-bit kernels against torch bf16 matmul at dit4sr-medium shapes, and the cost of fusing the H-SVD branches.

Rows: M = 8192 tokens (4096 image + 4096 LR, one 1024x1024 output), K, N in {1536, 6144}. Per shape, timed in
the same run (median of --reps after warm-up, CUDA events): torch bf16 ``x @ W`` (float32 on the CPU); the W4A4 and W8A8
``lowbit_gemm`` alone (codes already made); ``rotate_quantize`` alone; the whole W4A4 linear
(``rotate_quantize`` + ``lowbit_gemm``) bare and with the fused SVD-G (rank 32) and SVD-L (Q-DiT4SR's
block) branches. Ratios: bf16 / GEMM (the target is >= 1.6x on H100/H200; INT8 tensor cores cap it at 2x) and
low-rank overhead = fused / bare - 1 (target <= 15%). Every kernel output is first checked against its torch
reference. Writes bench/results/gpu_kernels.json (``render`` gives its Markdown section).

--tiny runs small shapes end to end (on the CPU through Triton's interpreter when there is no GPU, or with
--interpret) to prove the script works: it writes bench/results/gpu_kernels_tiny.json only, and its
timings are not performance figures.
Run: python bench/gpu_kernels.py   (H100/H200: a few minutes, most of it Triton compiling)
"""

from __future__ import annotations

import dataclasses

import torch
from common import provenance, publish, sqnr_db
from gpu_common import device_name, parse_args, random_specs, time_ms
MEDIUM = dict(tokens=8192, dims=(1536, 6144), rank=32, local_rank=8)
TINY = dict(tokens=160, dims=(96, 192), rank=8, local_rank=2)


def bench_shape(k: int, n: int, m: int, cfg: dict, device: torch.device, reps: int) -> dict:
    from qdit4sr_export.plugins.activation_spec import ActivationSpec
    from qdit4sr_export.plugins.lowbit_gemm import LowbitGemm
    from qdit4sr_export.plugins.lowbit_gemm_reference import lowbit_gemm_reference
    from qdit4sr_export.plugins.rotate_quantize import RotateQuantize
    from qdit4sr_export.plugins.rotate_quantize_reference import rotate_quantize_reference

    from qdit4sr_export.quant.hsvd import select_block

    out_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    block = select_block(n, k, cfg["local_rank"])
    g = torch.Generator().manual_seed(k + n)
    x = torch.randn(m, k, generator=g).to(device, out_dtype)
    w = (torch.randn(k, n, generator=g) / k ** 0.5).to(device, out_dtype)
    row = {"M": m, "K": k, "N": n, "svd_rank": cfg["rank"], "svd_l_block": list(block)}

    lr_act, lr_w = random_specs(k, n, wbits=4, rank=cfg["rank"], block=block, device=device, seed=1)
    bare_act = ActivationSpec(k, lr_act.rotation)
    rq_bare, rq_lr = RotateQuantize(bare_act, device), RotateQuantize(lr_act, device)
    _, w4 = random_specs(k, n, wbits=4, rank=0, block=None, device=device, seed=2)
    _, w8 = random_specs(k, n, wbits=8, rank=0, block=None, device=device, seed=3)
    g4, g8, g4_lr = LowbitGemm(w4, device), LowbitGemm(w8, device), LowbitGemm(lr_w, device)
    a4, a8, a4_lr = rq_bare(x, 4), rq_bare(x, 8), rq_lr(x, 4)

    # Correctness first (a subset of rows): kernels against their torch references.
    rows = min(m, 256)
    xs = x[:rows].float().cpu()
    ref_act = rotate_quantize_reference(lr_act, xs, 4)
    got_act = rq_lr(x[:rows], 4)
    row["rq_codes_equal"] = float((got_act.codes.cpu() == ref_act.codes).float().mean())
    row["rq_h_sqnr_db"] = round(sqnr_db(ref_act.h, got_act.h.cpu()), 1)
    want = lowbit_gemm_reference(ref_act, moved(lr_w, "cpu"))
    got = g4_lr(moved(ref_act, device), out_dtype=torch.float32).cpu()
    row["gemm_sqnr_db"] = round(sqnr_db(want, got), 1)
    if row["gemm_sqnr_db"] < 100 or row["rq_codes_equal"] < 0.999:
        raise SystemExit(f"kernel check failed at K={k} N={n}: {row}")

    t = {
        "torch_matmul": time_ms(lambda: x @ w, device, reps=reps),
        "w4a4_gemm": time_ms(lambda: g4(a4, out_dtype), device, reps=reps),
        "w8a8_gemm": time_ms(lambda: g8(a8, out_dtype), device, reps=reps),
        "rotate_quantize": time_ms(lambda: rq_bare(x, 4), device, reps=reps),
        "w4a4_linear_bare": time_ms(lambda: g4(rq_bare(x, 4), out_dtype), device, reps=reps),
        "w4a4_gemm_lowrank_epilogue": time_ms(lambda: g4_lr(a4_lr, out_dtype), device, reps=reps),
        "w4a4_linear_lowrank": time_ms(lambda: g4_lr(rq_lr(x, 4), out_dtype), device, reps=reps),
    }
    row["ms"] = {key: round(v, 4) for key, v in t.items()}
    row["speedup_vs_bf16"] = {"w4a4_gemm": round(t["torch_matmul"] / t["w4a4_gemm"], 3),
                              "w8a8_gemm": round(t["torch_matmul"] / t["w8a8_gemm"], 3),
                              "w4a4_linear_bare": round(t["torch_matmul"] / t["w4a4_linear_bare"], 3),
                              "w4a4_linear_lowrank": round(t["torch_matmul"] / t["w4a4_linear_lowrank"], 3)}
    row["lowrank_overhead"] = {"linear": round(t["w4a4_linear_lowrank"] / t["w4a4_linear_bare"] - 1, 4),
                               "gemm_epilogue": round(t["w4a4_gemm_lowrank_epilogue"] / t["w4a4_gemm"] - 1, 4)}
    return row


def moved(obj, device):
    """A copy of a dataclass of tensors (ActivationCodes, WeightSpec) with every tensor on ``device``."""
    return dataclasses.replace(obj, **{f.name: getattr(obj, f.name).to(device) for f in dataclasses.fields(obj)
                                       if isinstance(getattr(obj, f.name), torch.Tensor)})


def render(result: dict) -> str:
    lines = ["## GPU kernels", "",
             f"{provenance(result)} Device: {result['device']}.",
             f"Median of {result['reps']} after warm-up; every ratio is against the torch matmul timed in the same "
             "run. Kernel outputs checked against their torch references first (columns: SQNR, codes equal).", "",
             f"| M x K x N | torch {result['torch_matmul_dtype']} matmul ms | W4A4 GEMM | W8A8 GEMM "
             "| W4A4 linear (quantize + GEMM) | + fused SVD-G/SVD-L | low-rank overhead (linear / GEMM epilogue) "
             "| check |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        s, o = r["speedup_vs_bf16"], r["lowrank_overhead"]
        lines.append(f"| {r['M']} x {r['K']} x {r['N']} | {r['ms']['torch_matmul']:.3f} | {s['w4a4_gemm']:.2f}x | "
                     f"{s['w8a8_gemm']:.2f}x | {s['w4a4_linear_bare']:.2f}x | {s['w4a4_linear_lowrank']:.2f}x | "
                     f"{o['linear'] * 100:+.1f}% / {o['gemm_epilogue'] * 100:+.1f}% | {r['gemm_sqnr_db']} dB, "
                     f"{r['rq_codes_equal']:.4f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    args, device = parse_args(__doc__, "the dit4sr-medium shapes", "Small shapes: prove the script runs.")
    cfg = TINY if args.tiny else MEDIUM
    reps = args.reps or (2 if device.type == "cpu" else 20)
    rows = [bench_shape(k, n, cfg["tokens"], cfg, device, reps) for k in cfg["dims"] for n in cfg["dims"]]
    result = {"device": device_name(device), "interpreted": device.type == "cpu",
              "torch_matmul_dtype": "bfloat16" if device.type == "cuda" else "float32",
              "tiny": args.tiny, "reps": reps, "rows": rows}
    publish("gpu_kernels_tiny" if args.tiny else "gpu_kernels", result, render)


if __name__ == "__main__":
    main()

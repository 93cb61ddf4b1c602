"""One dit4sr-medium denoising step at a 1024x1024 output: W4A4 on the Triton kernels against bf16 torch.

Model: dit4sr-medium (hidden 1536; its 24 blocks, or the first ``--blocks``), seeded default-init weights; latent
128x128 (a 1024x1024 output
through the 8x autoencoder) -> 4096 image + 4096 LR tokens, 333 text tokens, batch 1. The W4A4 model is the
same module with every active block linear replaced by the triton backend's ``KernelLinear`` (signed
Hadamard, SVD-G rank 32, SVD-L at Q-DiT4SR's block, 4-bit weights and activations) holding random codes and
factors of the engine-set layout: latency does not depend on their values. Linears whose outputs never reach
the model output (``to_k_control``, attn2's text projections: pruned from engine sets) are skipped in both
models. Timed in the same run, eager and replayed as CUDA graphs, median of --reps after warm-up.
Writes bench/results/gpu_step.json (``render`` gives its Markdown section; target: >= 1.4x bf16).

--tiny runs dit4sr-tiny at an 8x8 latent end to end (on the CPU through Triton's interpreter when there is
no GPU, or with --interpret) to prove the script works: bench/results/gpu_step_tiny.json only; its timings
are not performance figures.
Run: python bench/gpu_step.py   (H100/H200: a few minutes, most of it Triton compiling)
"""

from __future__ import annotations


import torch
from common import provenance, publish
from gpu_common import device_name, parse_args, random_specs, time_ms


def swap(model: torch.nn.Module, name: str, new: torch.nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, new)


def timed(model, args, device, reps: int) -> dict[str, float]:
    from qdit4sr_export.runtime.cuda_graphs import GraphCache

    def forward(*a):
        with torch.no_grad():
            return model(*a, return_dict=False)[0]

    out = forward(*args)
    if not bool(torch.isfinite(out).all()):
        raise SystemExit("non-finite model output")
    ms = {"eager": time_ms(lambda: forward(*args), device, reps=reps, warmup=1)}
    if device.type == "cuda":
        graphs = GraphCache(forward)
        ms["cuda_graph"] = time_ms(lambda: graphs("step", args), device, reps=reps, warmup=1)
    return ms


def main() -> None:
    args, device = parse_args(__doc__, "a dit4sr-medium step", "dit4sr-tiny, 8x8 latent: prove the script runs.",
                              extra=lambda ap: ap.add_argument("--blocks", type=int, default=None,
                                                               help="The model's first N blocks (default: all)."))
    from qdit4sr_export.plugins.lowbit_gemm import LowbitGemm
    from qdit4sr_export.plugins.trt_configs import shapes_plan
    from qdit4sr_export.runtime.kernel_linear import DeadLinear, KernelLinear

    from qdit4sr_export.model import build_dit4sr
    from qdit4sr_export.model.config import PRESETS

    preset, side, text = ("dit4sr-tiny", 8, 4) if args.tiny else ("dit4sr-medium", 128, 333)
    config = PRESETS[preset] if args.blocks is None else PRESETS[preset].with_blocks(args.blocks)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    reps = args.reps or (1 if device.type == "cpu" else 10)
    torch.manual_seed(0)
    model = build_dit4sr(config, device=device, dtype=dtype)
    plan = shapes_plan(config)
    for name, lp in plan.layers.items():
        if not lp.active:
            swap(model, name, DeadLinear(lp.in_features, lp.out_features))
    cfg = model.config
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, cfg.in_channels, side, side, generator=g)
    inputs = [t.to(device, dtype) for t in (x, torch.randn(x.shape, generator=g),
                                             torch.randn(1, text, cfg.joint_attention_dim, generator=g),
                                             torch.randn(1, cfg.pooled_projection_dim, generator=g))]
    inputs.append(torch.full((1,), 500.0, device=device))
    base = timed(model, inputs, device, reps)

    active = {n: lp for n, lp in plan.layers.items() if lp.active}
    for i, (name, lp) in enumerate(active.items()):
        act, w = random_specs(lp.in_features, lp.out_features, wbits=4, rank=lp.svd_rank, block=lp.local_block,
                              device=device, seed=i, name=name)
        layer = KernelLinear(name, act, {4: LowbitGemm(w, device)}, lp.out_features, device)
        layer.select(4, 4)
        swap(model, name, layer)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    quant = timed(model, inputs, device, reps)
    result = {"device": device_name(device), "interpreted": device.type == "cpu",
              "tiny": args.tiny, "preset": preset, "blocks": config.num_layers, "latent": side,
              "tokens": {"image": (side // 2) ** 2, "lr": (side // 2) ** 2, "text": text},
              "torch_dtype": str(dtype).removeprefix("torch."), "quantized_linears": len(active), "reps": reps,
              "ms": {"torch": base, "w4a4_triton": quant},
              "speedup": {k: round(base[k] / quant[k], 3) for k in base}}
    publish("gpu_step_tiny" if args.tiny else "gpu_step", result, render)


def render(result: dict) -> str:
    base, quant = result["ms"]["torch"], result["ms"]["w4a4_triton"]
    rows = "\n".join(f"| {mode} | {base[mode]:.1f} | {quant[mode]:.1f} | {result['speedup'][mode]:.2f}x |"
                     for mode in base)
    return (f"## GPU step\n\n{provenance(result)} Device: {result['device']}.\nOne {result['preset']} step ({result['blocks']} blocks) "
            f"at a {result['latent'] * 8}x{result['latent'] * 8} output ({result['tokens']}), batch 1, median of "
            f"{result['reps']}; both timed in the same run.\n\n| mode | {result['torch_dtype']} torch ms "
            f"| W4A4 triton ms | speedup |\n|---|---|---|---|\n{rows}\n")

if __name__ == "__main__":
    main()

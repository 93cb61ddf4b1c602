"""lowbit_gemm's tile table, chosen without a GPU by compile-time proxies, and its re-tuning on a GPU.

``--sweep``: for every key of the table (dit4sr-medium's layer shapes under its Q-DiT4SR plan at W4A4, W8A8 per
token and with groups of 128, and W4 with float activations; SVD-G rank 32 and the SVD-L block), compile every
candidate tile of plugins/gemm_tuning.py for sm_90, twice: as the triton backend's JIT specializes it and as the
TensorRT plugins' AOT PTX (both with 16-byte aligned tensors), and read its proxies (``ptxas -v`` registers and
spills, Triton's shared memory, async copies and int8 ``wgmma`` in the main loop, programs per SM). The proxy rule
ranks the candidates of one representative shape per setting; each key at its own shape keeps the best-ranked
candidate still feasible there. ``--write-table`` rewrites plugins/gemm_table.py.
``--retune`` (GPU): time each key's candidates that the proxy rule finds feasible (CUDA events, median; outputs
checked equal across tiles) and, with ``--write-table``, keep the fastest. ``--retune --tiny`` runs that code on one small
key in Triton's CPU interpreter: a check of the script (written as a ``_quick`` result git ignores), not a timing.
Without ``--retune`` nothing is timed: every number is a compile-time proxy, not a speed.
Run: python bench/kernel_configs.py --sweep [--write-table] [--jobs N]   (GPU: --retune [--write-table])
"""

from __future__ import annotations

import os
import sys

if "--retune" not in sys.argv:  # compiling for sm_90 on any machine: Triton's interpreter must be off
    os.environ.pop("TRITON_INTERPRET", None)
elif "--tiny" in sys.argv:  # the retune check on the CPU: interpreted
    os.environ["TRITON_INTERPRET"] = "1"
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402

from common import ROOT, write_result  # noqa: E402

TOKENS = 8192  # one dit4sr-medium step at a 1024 x 1024 output (4096 image + 4096 LR tokens)
TABLE = ROOT / "plugins" / "gemm_table.py"
TILE_FIELDS = ("bm", "bn", "bk", "lc", "warps", "stages")


def _pool(jobs: int) -> ProcessPoolExecutor:
    """Compiling workers started fresh (forking a process that has imported torch can hang)."""
    return ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"))


def proxy_one(job) -> dict:
    """One candidate tile's compile-time facts at ``key``."""
    from qdit4sr_export.plugins.gemm_tuning import key_attrs, proxies

    key, tile = job
    return proxies(key_attrs(key), tile, TOKENS)


def verify_one(job) -> dict:
    from qdit4sr_export.plugins.gemm_tuning import first_feasible

    key, tiles = job
    tile, tried = first_feasible(key, tiles, TOKENS)
    return {"key": key, "chosen": tile, "tried": tried}


def table_keys() -> list:
    """The table's keys: dit4sr-medium's layer shapes at each setting, Q-DiT4SR's SVD-L fused, large token counts."""
    from qdit4sr_export.plugins.gemm_configs import TOKEN_BUCKETS, key_of
    from qdit4sr_export.plugins.trt_configs import plan_configs, shapes_plan

    keys = []
    for c in plan_configs(shapes_plan()):
        g = c.lowbit_gemm
        a_mode = 2 if not g.abits else (0 if g.abits <= 4 else 1)
        key = key_of(TOKEN_BUCKETS[-1], g.n, g.k, g.wbits, a_mode, g.group_size or None, bool(g.svd_l_p))
        if key not in keys:
            keys.append(key)
    return keys


def sweep(jobs: int, write: bool) -> dict:
    """Proxies of every candidate at one representative shape per setting (storage, mode, group, SVD-L), ranked by
    the proxy rule; then, per table key at its own shape, the best-ranked candidate that is feasible there. The
    table gets each key's tile for the 1024-token bucket (TensorRT's smallest tactic) and the largest: the
    compile-time facts do not depend on the token count."""
    import dataclasses

    from qdit4sr_export.plugins.gemm_configs import TOKEN_BUCKETS
    from qdit4sr_export.plugins.gemm_tuning import candidates, ranked, table_source

    keys = table_keys()
    setting = lambda k: (k.weights, k.a_mode, k.group, k.svd_l)  # noqa: E731
    reps = {}
    for key in keys:
        reps.setdefault(setting(key), dataclasses.replace(key, n=6144, k=1536))
    jobs_list = [(rep, tile) for rep in reps.values() for tile in candidates(rep)]
    with _pool(jobs) as pool:
        facts = list(pool.map(proxy_one, jobs_list, chunksize=2))
    per_setting = {s: [f for (k, _), f in zip(jobs_list, facts) if k == rep] for s, rep in reps.items()}
    order = {s: ranked(fs, reps[s].a_mode) for s, fs in per_setting.items()}
    with _pool(jobs) as pool:
        checked = list(pool.map(verify_one, [(k, order[setting(k)]) for k in keys]))
    as_dict = lambda t: None if t is None else dataclasses.asdict(t)  # noqa: E731
    result = {"tokens": TOKENS,
              "sweep": [{"key": dataclasses.asdict(reps[s]), "chosen": as_dict(next(iter(order[s]), None)),
                         "candidates": per_setting[s]} for s in reps],
              "per_key": [{"key": dataclasses.asdict(c["key"]), "chosen": as_dict(c["chosen"]), "tried": c["tried"]}
                          for c in checked]}
    result["no_feasible_tile"] = [dataclasses.asdict(c["key"]) for c in checked if c["chosen"] is None]
    if write and not result["no_feasible_tile"]:
        table = {dataclasses.replace(c["key"], tokens=t): c["chosen"] for c in checked for t in TOKEN_BUCKETS[1:]}
        TABLE.write_text(table_source(table, "Chosen by compile-time proxies, no GPU (bench/kernel_configs.py "
                                             "--sweep); --retune on a GPU times them."))
    return result


def retune(write: bool, reps: int, tiny: bool) -> dict:
    """GPU: each key's candidates that the proxy rule finds feasible (48 KiB, no spills, pipelined, in both
    compiles), timed; the fastest kept. ``tiny``: one small key through Triton's CPU interpreter, its first two
    candidates unfiltered (checks this code runs; its times are not speeds)."""
    import dataclasses

    import torch
    from gpu_common import choose_device, device_name, time_ms
    from qdit4sr_export.plugins.gemm_configs import TABLE as CURRENT, TOKEN_BUCKETS, key_of
    from qdit4sr_export.plugins.gemm_tuning import candidates, feasible, key_attrs, proxies, table_source
    from qdit4sr_export.plugins.lowbit_gemm import LowbitGemm
    from qdit4sr_export.plugins.trt_launch import prepared_lowbit_gemm, prepared_rotate_quantize
    from qdit4sr_export.plugins.trt_ops import RotateQuantizeAttrs

    device = choose_device(tiny)
    if device.type != "cuda" and not tiny:
        raise SystemExit("--retune times kernels on a CUDA GPU (--tiny checks the script on the CPU)")
    keys = [key_of(64, 64, 64, 4, 0, None, True)] if tiny else \
        [dataclasses.replace(k, tokens=t) for k in table_keys() for t in TOKEN_BUCKETS[1:]]
    table, out = dict(CURRENT), []
    for key in keys:
        tokens = min(key.tokens, TOKENS)  # the bucket's largest token count (8192 for the last)
        a = key_attrs(key, rank=8 if tiny else 32)
        w = prepared_lowbit_gemm(a, device.type).w
        g = torch.Generator().manual_seed(0)
        w = dataclasses.replace(w, codes=torch.randint(0, 255, w.codes.shape, generator=g).to(w.codes.dtype),
                                scale=torch.rand(w.scale.shape, generator=g) * 0.01)
        rq = prepared_rotate_quantize(RotateQuantizeAttrs(n=a.k, bits=a.abits, group_size=a.group_size, rank=a.rank,
                                                          svd_l_p=a.svd_l_p, svd_l_q=a.svd_l_q), device.type,
                                      interpreted=tiny)
        act = rq(torch.randn(tokens, a.k, device=device), a.abits or None, store_z=not a.abits)
        timed, first = [], None
        for tile in candidates(key)[:2] if tiny else candidates(key):
            if not tiny and not feasible(proxies(a, tile, TOKENS), key.a_mode):
                continue  # the sweep's conditions, in both compiles (the plugins' PTX included)
            gemm = LowbitGemm(w, device, tile=tile)
            y = gemm(act, torch.float32)
            first = y if first is None else first
            if float((y - first).abs().max() / first.abs().max()) > 1e-5:  # every tile computes the same GEMM
                raise SystemExit(f"tile {tile} of {key} disagrees with {timed[0][1]}")
            timed.append((time_ms(lambda: gemm(act, torch.bfloat16), device, reps=reps), tile))
        best = min(timed, key=lambda t: t[0])
        table[key] = best[1]
        out.append({"key": dataclasses.asdict(key), "fastest": dataclasses.asdict(best[1]), "ms": round(best[0], 4),
                    "timed": [{"tile": dataclasses.asdict(t), "ms": round(ms, 4)} for ms, t in timed]})
    if write and not tiny:
        TABLE.write_text(table_source(table, f"Timed on {device_name(device)} (bench/kernel_configs.py --retune)."))
    return {"device": device_name(device), "tiny": tiny, "retune": out}


def render(result: dict) -> str:
    """The Markdown section of either of this script's results: the sweep, or the GPU retune."""
    if "sweep" in result:
        return render_sweep(result)
    return render_retune(result)


def render_sweep(result: dict) -> str:
    """The sweep's Markdown: per setting its candidates and the proxy rule's favourite, per key the tile kept."""
    lines = ["## lowbit_gemm tile sweep by compile-time proxies", "",
             f"Command: `{result['command']}`. Machine: {result['machine']}. Date: {result['date']}. No GPU: "
             "the table is chosen by compile-time proxies for sm_90 (plugins/gemm_tuning.py states the rule), not "
             "timed. Each candidate is compiled as the triton backend's JIT and as the TensorRT plugins' AOT PTX, "
             "both with 16-byte aligned tensors; feasible: within 48 KiB of shared memory, no spills, async copies "
             "and (integer activations) int8 wgmma in the main loop, in both compiles.", "",
             "First, per setting, at N 6144 and K 1536: the candidates compiled, how many are feasible, and the "
             "rule's favourite.", "",
             "| weights | act. mode | group | SVD-L | candidates | feasible | favourite (BM BN BK LC warps stages) |",
             "|---|---|---|---|---|---|---|"]
    for s in result["sweep"]:
        k, c = s["key"], s["chosen"]
        ok = sum(1 for f in s["candidates"] if _feasible(f, k["a_mode"]))
        tile = " ".join(str(c[f]) for f in TILE_FIELDS) if c else "none"
        lines.append(f"| {k['weights']} | {k['a_mode']} | {k['group']} | {k['svd_l']} | {len(s['candidates'])} | "
                     f"{ok} | {tile} |")
    lines += ["", "Then per table key at its own shape: the best-ranked candidate feasible there (kept), and how many "
              "were compiled to find it (tried).", "",
              "| N | K | weights | act. mode | group | SVD-L | kept | tried |", "|---|---|---|---|---|---|---|---|"]
    for p in result.get("per_key", []):
        k, c = p["key"], p["chosen"]
        tile = " ".join(str(c[f]) for f in TILE_FIELDS) if c else "none"
        lines.append(f"| {k['n']} | {k['k']} | {k['weights']} | {k['a_mode']} | {k['group']} | {k['svd_l']} | "
                     f"{tile} | {len(p['tried'])} |")
    return "\n".join(lines) + "\n"


def render_retune(result: dict) -> str:
    lines = ["## lowbit_gemm tiles timed on a GPU", "",
             f"Command: `{result['command']}`. Device: {result['device']}. Machine: {result['machine']}. "
             f"Date: {result['date']}." + (" Interpreted check of the script: not speeds." if result["tiny"] else ""),
             "", "| N | K | weights | act. mode | group | SVD-L | fastest (BM BN BK LC warps stages) | ms | timed |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["retune"]:
        k, t = r["key"], r["fastest"]
        tile = " ".join(str(t[f]) for f in TILE_FIELDS)
        lines.append(f"| {k['n']} | {k['k']} | {k['weights']} | {k['a_mode']} | {k['group']} | {k['svd_l']} | "
                     f"{tile} | {r['ms']} | {len(r['timed'])} |")
    return "\n".join(lines) + "\n"


def _feasible(facts: dict, a_mode: int) -> bool:
    from qdit4sr_export.plugins.gemm_tuning import feasible

    return feasible(facts, a_mode)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sweep", action="store_true", help="Compile every candidate tile; pick by the proxy rule.")
    ap.add_argument("--retune", action="store_true", help="GPU: time the feasible candidates of each key.")
    ap.add_argument("--write-table", action="store_true", help="Rewrite plugins/gemm_table.py with the choices.")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="Compiling processes.")
    ap.add_argument("--reps", type=int, default=20, help="--retune: timed repetitions per candidate.")
    ap.add_argument("--tiny", action="store_true", help="--retune: one small key, interpreted on the CPU.")
    args = ap.parse_args()
    if args.retune:
        name = "kernel_configs_retune_quick" if args.tiny else "kernel_configs_retune"
        result = retune(args.write_table, args.reps, args.tiny)
    elif args.sweep:
        name, result = "kernel_configs_sweep", sweep(args.jobs, args.write_table)
    else:
        ap.error("say --sweep (compile-time proxies) or --retune (GPU timing)")
    path = write_result(name, result)
    print(render(json.loads(path.read_text())))
    print(f"wrote {path}")
    if args.write_table and result.get("no_feasible_tile"):
        raise SystemExit(f"no feasible tile for {result['no_feasible_tile']}: plugins/gemm_table.py left as it was")


if __name__ == "__main__":
    main()

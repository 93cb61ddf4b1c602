"""Choosing ``lowbit_gemm`` tiles for ``gemm_configs``: the candidate tiles of a key, their compile-time proxies on
sm_90 (no GPU: ``ptxas -v`` registers and spills, Triton's shared memory, async copies and int8 ``wgmma`` in the
PTX), the rule that picks one by those proxies, and the text of ``gemm_table.py``. ``bench/kernel_configs.py``
runs the sweep (``--sweep``) and, on a GPU, times the feasible candidates instead (``--retune``).

The proxy rule, used while no GPU has timed the table: a candidate is feasible when, in both compiles (the triton
backend's JIT and the plugins' AOT PTX), it fits TensorRT's 48 KiB of dynamic shared memory, spills nothing,
pipelines its main loop with async copies and (integer activations) multiplies on int8 ``wgmma``. Among feasible
tiles it prefers at least 3 pipeline stages, then the larger output tile (bytes loaded per MMA: BM BN / (BM + BN)),
then more stages, a longer K step, and fewer registers.

Alignment: both compiles assume 16-byte aligned tensors. Triton's JIT specializes the backend's launches on
torch's aligned allocations; the plugins' PTX is compiled with every pointer divisible by 16, the assumption
``trt_contract`` states as its alignment rule (NVIDIA's TensorRT-LLM Triton plugin generator declares every tensor
so; TensorRT itself documents 256-byte alignment only for the engine's own input and output addresses), and a shape
whose rows are not multiples of 16 bytes is refused when the plugin kernel is built. Without the assumption Triton
cannot prove the alignment its 16-byte async copies need and loads most tiles through registers instead.
"""

from __future__ import annotations

import dataclasses

from qdit4sr_export.plugins.gemm_configs import SHARED_LIMIT, GemmKey, GemmTile, k_step
from qdit4sr_export.plugins.trt_ops import LowbitGemmAttrs

#: (BM, BN, warps) of the candidate output tiles, K steps, pipeline stages and low-rank chunks.
INT_TILES = ((64, 64, 4), (64, 128, 4), (64, 128, 8), (128, 128, 8), (128, 256, 8))
FLOAT_TILES = ((64, 64, 4), (64, 128, 4), (128, 128, 8))
INT_K_STEPS, FLOAT_K_STEPS = (64, 128, 256), (32, 64)
STAGES = (2, 3, 4)
CHUNKS = (16, 32)
#: A representative weight width per storage and activation width per mode (the kernel is the same for all).
WBITS = {"INT4": 4, "INT8": 6, "UINT8": 8}
ABITS = {0: 4, 1: 8, 2: 0}
#: Hopper (sm_90) per-SM limits for the occupancy estimate.
SM_REGISTERS, SM_SHARED, SM_WARPS, BLOCK_RESERVED_SHARED = 65536, 228 * 1024, 64, 1024


def candidates(key: GemmKey) -> list[GemmTile]:
    """Every tile tried for ``key`` (K steps reduced to divide its group, duplicates dropped), in a fixed order."""
    floats = key.a_mode == 2
    out = []
    for bm, bn, warps in FLOAT_TILES if floats else INT_TILES:
        for bk in FLOAT_K_STEPS if floats else INT_K_STEPS:
            for stages in STAGES[:2] if floats else STAGES:
                for lc in CHUNKS:
                    tile = GemmTile(bm, bn, k_step(bk, key.group or key.k, key.a_mode), lc, warps, stages)
                    if tile not in out:
                        out.append(tile)
    return out


def key_attrs(key: GemmKey, rank: int = 32, local_rank: int = 8) -> LowbitGemmAttrs:
    """A LowbitGemm node of ``key`` as the Q-DiT4SR plan lowers it: SVD-G at ``rank``, SVD-L at its block."""
    from qdit4sr_export.quant.hsvd import select_block

    s_o, s_i = select_block(key.n, key.k, local_rank) if key.svd_l else (0, 0)
    return LowbitGemmAttrs(k=key.k, n=key.n, abits=ABITS[key.a_mode], wbits=WBITS[key.weights],
                           group_size=key.group, rank=rank, svd_l_p=key.n // s_o if s_o else 0,
                           svd_l_q=key.k // s_i if s_i else 0, svd_l_so=s_o, bias=1)


def tile_launch(attrs: LowbitGemmAttrs, tile: GemmTile, tokens: int):
    """The plugin kernel's launch for ``attrs`` with ``tile`` in place of the table's choice."""
    from qdit4sr_export.plugins.trt_launch import lowbit_gemm_launch

    launch = lowbit_gemm_launch(attrs, tokens)
    const = {**launch.constants, "BM": tile.bm, "BN": tile.bn, "BK": tile.bk, "LC": tile.lc}
    return dataclasses.replace(launch, constants=const, rows_per_program=tile.bm, cols_per_program=tile.bn,
                               num_warps=tile.warps, num_stages=tile.stages)


def blocks_per_sm(registers: int, warps: int, shared: int) -> int:
    """Programs an sm_90 SM holds at once by registers (allocated per warp in units of 256), shared memory and
    warps."""
    per_warp = -(-registers * 32 // 256) * 256
    return min(SM_REGISTERS // (per_warp * warps), SM_SHARED // (shared + BLOCK_RESERVED_SHARED), SM_WARPS // warps)


def proxies(attrs: LowbitGemmAttrs, tile: GemmTile, tokens: int, *, aot: bool = True) -> dict:
    """Compile-time facts of one candidate: the backend's compile (``triton``) and, with ``aot``, the plugins'
    (``trt-aot``): registers, spill bytes, shared bytes, async copies / int8 wgmma in a loop, programs per SM."""
    from qdit4sr_export.plugins.kernel_report import backend_row, plugin_row

    launch = tile_launch(attrs, tile, tokens)
    rows = {"triton": backend_row("candidate", launch, 90)}
    if aot:
        rows["trt-aot"] = plugin_row("candidate", launch, 1, 90)
    out = {"tile": dataclasses.asdict(tile)}
    for path, row in rows.items():
        if "error" in row:
            out[path] = {"error": row["error"]}
            continue
        out[path] = {k: row[k] for k in ("registers", "spill_bytes", "shared_bytes", "cp_async_in_loop",
                                         "tma_in_loop", "wgmma_int8_in_loop")}
        out[path]["blocks_per_sm"] = blocks_per_sm(row["registers"], tile.warps, row["shared_bytes"])
    return out


def feasible(facts: dict, a_mode: int) -> bool:
    """The proxy rule's conditions (module doc) on ``proxies``' facts."""
    jit, aot = facts.get("triton", {}), facts.get("trt-aot")
    if "registers" not in jit or (aot is not None and "registers" not in aot):
        return False
    compiles = [f for f in (jit, aot) if f is not None]
    return all(f["shared_bytes"] <= SHARED_LIMIT and f["spill_bytes"] == 0
               and (f["cp_async_in_loop"] or f["tma_in_loop"]) and (a_mode == 2 or f["wgmma_int8_in_loop"])
               for f in compiles)


def score(facts: dict) -> tuple:
    """Larger is preferred (module doc)."""
    t = GemmTile(**facts["tile"])
    return t.stages >= 3, t.bm * t.bn / (t.bm + t.bn), t.stages, t.bk, -facts["triton"]["registers"], -t.lc


def ranked(all_facts: list[dict], a_mode: int) -> list[GemmTile]:
    """The feasible candidates among ``all_facts``, the proxy rule's favourite first."""
    ok = sorted((f for f in all_facts if feasible(f, a_mode)), key=score, reverse=True)
    return [GemmTile(**f["tile"]) for f in ok]


def select(all_facts: list[dict], a_mode: int) -> GemmTile | None:
    """The proxy rule's choice among candidates' facts (None when none is feasible)."""
    return next(iter(ranked(all_facts, a_mode)), None)


def first_feasible(key: GemmKey, tiles: list[GemmTile], tokens: int) -> tuple[GemmTile | None, list[dict]]:
    """The first of ``tiles`` feasible at ``key``'s own shape (facts can shift with N and K), and every fact read."""
    attrs, tried = key_attrs(key), []
    for tile in tiles:
        tried.append(proxies(attrs, tile, tokens))
        if feasible(tried[-1], key.a_mode):
            return tile, tried
    return None, tried


def table_source(table: dict[GemmKey, GemmTile], note: str) -> str:
    """The text of ``gemm_table.py`` for ``table`` (rows sorted: the same table gives the same bytes)."""
    rows = sorted(tuple(dataclasses.astuple(k)) + tuple(dataclasses.astuple(t)) for k, t in table.items())
    lines = ['"""lowbit_gemm tile table (data for ``gemm_configs``), written by bench/kernel_configs.py. Rows: (token',
             'bucket, N, K, weight storage, activation mode, group size, SVD-L fused, BM, BN, BK, LC, warps, stages)."""',
             "", f"#: {note}", "ROWS = ["]
    lines += [f"    {row!r}," for row in rows]
    return "\n".join(lines + ["]", ""])

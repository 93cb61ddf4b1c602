"""Tile choice of ``lowbit_gemm``: one function both the triton backend and the TensorRT plugins call, so they
compile the same kernel for the same layer and token count.

``triton.autotune`` cannot run inside an ahead-of-time TensorRT plugin, so the choice is a table
(``gemm_table.ROWS``) keyed on (token bucket, N, K, weight storage, activation mode, group size, SVD-L) with a
rule for every other key. Every configuration must fit TensorRT's 48 KiB dynamic shared memory and compile
without register spills on sm_90, as the triton backend compiles it and as the plugins' 16-byte aligned PTX
(``tests/plugins/test_gemm_configs.py`` compiles them and checks). The table was chosen without a GPU, by
compile-time proxies only (shared memory, spills, async copies in the main loop, registers; the rule is in
``gemm_tuning``): ``bench/kernel_configs.py --sweep`` records them, and ``--retune`` on a GPU times each
candidate with CUDA events and rewrites the table.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from qdit4sr_export.plugins import gemm_table
from qdit4sr_export.plugins.packing import weight_storage
from qdit4sr_export.plugins.triton_env import next_pow2

#: Token counts bounding each bucket of the table (the last: every larger M the kernels' int32 M takes).
TOKEN_BUCKETS = (64, 1024, 2**31 - 1)
#: TensorRT's ahead-of-time launch does not opt in to more than the default 48 KiB of dynamic shared memory.
SHARED_LIMIT = 48 * 1024


@dataclass(frozen=True)
class GemmKey:
    """What the choice depends on: token bucket, shape, weight storage (INT4 / INT8 / UINT8), activation mode
    (0: packed codes <= 4 bits, 1: int8 codes, 2: float), group size (0: per channel) and whether SVD-L is fused."""

    tokens: int
    n: int
    k: int
    weights: str
    a_mode: int
    group: int
    svd_l: bool


@dataclass(frozen=True)
class GemmTile:
    """Output tile (bm, bn), K step bk, the low-rank epilogue's inner chunk lc, and the launch's warps and
    pipeline stages."""

    bm: int
    bn: int
    bk: int
    lc: int
    warps: int
    stages: int


#: The tuned entries (``gemm_table.ROWS``: key fields, then tile fields, in the dataclasses' order).
TABLE = {GemmKey(*row[:7]): GemmTile(*row[7:]) for row in gemm_table.ROWS}


def bucket(m: int) -> int:
    """The token bucket of ``m`` tokens."""
    return next(b for b in TOKEN_BUCKETS if m <= b)


def key_of(m: int, n: int, k: int, wbits: int, a_mode: int, group_size: int | None, svd_l: bool) -> GemmKey:
    return GemmKey(bucket(m), n, k, weight_storage(wbits), a_mode, group_size or 0, bool(svd_l))


def k_step(bk: int, gs: int, a_mode: int) -> int:
    """``bk`` reduced to divide the group size ``gs`` where its power-of-two part allows (no masks along K), and
    never below the dot's 16 inner columns per half (32 for packed activations, which split into even / odd k)."""
    floor = 32 if a_mode == 0 else 16
    pow2_part = gs & -gs
    return max(floor, min(bk, pow2_part, next_pow2(gs)))


def rule(key: GemmKey) -> GemmTile:
    """The choice for a key the table does not list: the table's tile for the same weight storage and activation
    mode (the same group size and SVD-L if listed; the sweep kept one tile per such setting across every
    dit4sr-medium shape), else a conservative tile (2 stages); 64 rows and 4 warps for the smallest bucket; the
    K step re-fitted to the group."""
    modes = [(k, t) for k, t in sorted(TABLE.items(), key=lambda kt: dataclasses.astuple(kt[0]))
             if (k.weights, k.a_mode) == (key.weights, key.a_mode)]
    exact = [t for k, t in modes if (k.group, k.svd_l) == (key.group, key.svd_l)]
    if exact or modes:
        tile = (exact or [t for _, t in modes])[-1]
    elif key.a_mode == 2:  # float activations: fp32 tiles are four times the bytes
        tile = GemmTile(64, 64, 32, 16, 4, 2)
    else:
        tile = GemmTile(128, 128, 64, 16, 8, 2)
    if key.tokens <= TOKEN_BUCKETS[0] and tile.bm > 64:
        tile = dataclasses.replace(tile, bm=64, warps=4)
    return dataclasses.replace(tile, bk=k_step(tile.bk, key.group or key.k, key.a_mode))


def interpreted_tile(m: int, n: int, k: int, gs: int, a_mode: int) -> GemmTile:
    """Triton's CPU interpreter: the largest tiles (its cost is per operation, not per element)."""
    bm, bn = min(128, max(16, next_pow2(m))), min(256, max(32, next_pow2(n)))
    return GemmTile(bm, bn, k_step(min(256, max(32, next_pow2(k))), gs, a_mode), 32, 4, 1)


def gemm_tile(m: int, n: int, k: int, wbits: int, a_mode: int, group_size: int | None, svd_l: bool, *,
              interpreted: bool = False) -> GemmTile:
    """The tile for ``m`` tokens of an (n, k) layer: the table's entry, else :func:`rule`."""
    if interpreted:
        return interpreted_tile(m, n, k, group_size or k, a_mode)
    key = key_of(m, n, k, wbits, a_mode, group_size, svd_l)
    return TABLE.get(key) or rule(key)

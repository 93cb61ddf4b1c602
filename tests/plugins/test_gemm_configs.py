"""lowbit_gemm's tile table (gemm_configs): well-formed, one choice for the triton backend and the plugins, and
every configuration compiled for sm_90 within TensorRT's 48 KiB of dynamic shared memory, without spills, its main
loop on async copies and int8 wgmma, both as the triton backend compiles it and as the plugins' PTX; rotate_quantize at dit4sr-medium widths with
two programs per SM, within 48 KiB. Compiling runs in a subprocess (the session selects Triton's interpreter).
Default: a medium W4A4 and W8A8 layer and both rotate_quantize widths; ``-m slow``: every table row."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest
from qdit4sr_export.plugins.gemm_configs import (
    SHARED_LIMIT,
    TABLE,
    GemmTile,
    bucket,
    gemm_tile,
    k_step,
    key_of,
    rule,
)
from qdit4sr_export.plugins.gemm_tuning import candidates, feasible, key_attrs, select
from qdit4sr_export.plugins.trt_launch import TACTIC_TOKENS, lowbit_gemm_launch, prepared_lowbit_gemm
from qdit4sr_export.plugins.trt_ops import LowbitGemmAttrs

MEDIUM = [LowbitGemmAttrs(k=1536, n=6144, abits=4, wbits=4, rank=32, svd_l_p=8, svd_l_q=8, svd_l_so=768, bias=1),
          LowbitGemmAttrs(k=6144, n=1536, abits=8, wbits=8, group_size=128, rank=32, svd_l_p=2, svd_l_q=32,
                          svd_l_so=768, bias=1)]


def _pow2(v: int) -> bool:
    return v > 0 and not v & (v - 1)


def test_table_rows_are_tiles_the_kernel_takes():
    assert TABLE, "the table has entries for dit4sr-medium"
    for key, t in TABLE.items():
        assert key.weights in ("INT4", "INT8", "UINT8") and key.a_mode in (0, 1, 2) and key.tokens == bucket(key.tokens)
        assert all(_pow2(v) for v in (t.bm, t.bn, t.bk, t.lc)) and t.warps in (4, 8) and t.stages >= 2
        assert (key.group or key.k) % t.bk == 0  # K steps never straddle a group: no masks along K
        assert t.bk >= (32 if key.a_mode == 0 else 16) and t.lc >= 16


def test_k_step_divides_groups_where_it_can():
    assert [k_step(128, g, 0) for g in (64, 128, 192, 1536, 48)] == [64, 128, 64, 128, 32]  # 48: masked K steps
    assert k_step(64, 48, 1) == 16 and k_step(32, 96, 2) == 32
    assert rule(key_of(8192, 1536, 1536, 4, 2, None, True)).bk == 32  # float activations: small fp32 tiles


def test_backend_and_plugins_make_the_same_choice():
    """The plugins' tactics are the kernel's own choices; for table keys, the table's entries."""
    for a in MEDIUM:
        a_mode = 0 if a.abits <= 4 else 1
        for m in TACTIC_TOKENS:
            tile = gemm_tile(m, a.n, a.k, a.wbits, a_mode, a.group_size or None, True)
            plugin = lowbit_gemm_launch(a, m)
            backend = prepared_lowbit_gemm(a).constants(a_mode, m, "cuda")
            for const in (plugin.constants, backend):
                assert (const["BM"], const["BN"], const["BK"], const["LC"]) == (tile.bm, tile.bn, tile.bk, tile.lc)
            assert (plugin.num_warps, plugin.num_stages) == (backend["num_warps"], backend["num_stages"]) \
                == (tile.warps, tile.stages)
            key = key_of(m, a.n, a.k, a.wbits, a_mode, a.group_size or None, True)
            assert key in TABLE and tile == TABLE[key]  # every tactic of a medium layer is a checked table row


def test_rule_follows_the_table_and_shrinks_for_few_tokens():
    listed = next(k for k in TABLE if k.a_mode == 0 and k.group == 0 and k.svd_l)
    other = dataclasses.replace(listed, n=4096, k=2048)  # a shape the table does not list: its settings' tile
    assert other not in TABLE and rule(other) == TABLE[listed]
    few = rule(dataclasses.replace(other, tokens=bucket(16)))
    assert (few.bm, few.warps) == (64, 4) and gemm_tile(16, 4096, 2048, 4, 0, None, True) == few
    grouped = rule(dataclasses.replace(other, group=48))  # K steps re-fitted to a group the table does not list
    assert grouped.bk == 32


def test_proxy_rule_picks_a_feasible_tile():
    key = key_of(8192, 6144, 1536, 4, 0, None, True)
    compiled = {"registers": 190, "spill_bytes": 0, "shared_bytes": 49152, "cp_async_in_loop": True,
                "tma_in_loop": False, "wgmma_int8_in_loop": True}
    good = {"tile": dataclasses.asdict(GemmTile(128, 128, 128, 16, 8, 3)), "triton": compiled, "trt-aot": compiled}
    bigger = {**good, "tile": dataclasses.asdict(GemmTile(128, 256, 128, 16, 8, 3)),
              "trt-aot": {**compiled, "shared_bytes": SHARED_LIMIT + 1}}  # too much shared memory for TensorRT
    unpipelined = {**good, "tile": dataclasses.asdict(GemmTile(128, 256, 64, 16, 8, 4)),
                   "trt-aot": {**compiled, "cp_async_in_loop": False}}  # the plugins' main loop without cp.async
    assert feasible(good, 0) and not feasible(bigger, 0) and not feasible(unpipelined, 0)
    assert select([bigger, unpipelined, good], 0) == GemmTile(128, 128, 128, 16, 8, 3)
    assert GemmTile(128, 128, 128, 16, 8, 3) in candidates(key) and key_attrs(key).svd_l_so == 768


SCRIPT = """
import dataclasses, json, sys
from qdit4sr_export.plugins.gemm_configs import TABLE
from qdit4sr_export.plugins.gemm_tuning import blocks_per_sm, key_attrs, proxies
from qdit4sr_export.plugins.kernel_report import backend_row, plugin_row
from qdit4sr_export.plugins.trt_launch import lowbit_gemm_launch, rotate_quantize_launch
from qdit4sr_export.plugins.trt_ops import LowbitGemmAttrs, RotateQuantizeAttrs
gemms, rqs = json.loads(sys.argv[1]), json.loads(sys.argv[2])
if gemms is None:  # every table row
    gemms = [dataclasses.asdict(key_attrs(k)) for k in TABLE]
out = {"gemm": [], "rq": []}
for a in map(lambda d: LowbitGemmAttrs(**d), gemms):
    launch = lowbit_gemm_launch(a, 8192)
    c = launch.constants
    tile = type(next(iter(TABLE.values())))(c["BM"], c["BN"], c["BK"], c["LC"], launch.num_warps, launch.num_stages)
    out["gemm"].append({"attrs": dataclasses.asdict(a), **proxies(a, tile, 8192)})
for a in map(lambda d: RotateQuantizeAttrs(**d), rqs):
    launch = rotate_quantize_launch(a)
    facts = {"attrs": dataclasses.asdict(a)}
    for path, row in (("triton", backend_row("rq", launch, 90)), ("trt-aot", plugin_row("rq", launch, 1, 90))):
        facts[path] = {k: row[k] for k in ("registers", "spill_bytes", "shared_bytes")}
        facts[path]["blocks_per_sm"] = blocks_per_sm(row["registers"], launch.num_warps, row["shared_bytes"])
    out["rq"].append(facts)
print(json.dumps(out))
"""

RQ = [dict(n=1536, bits=4, rotation_n=1536, rotation_seed=0, smooth=1, rank=32,
            svd_l_p=8, svd_l_q=8, b_transposed=1),
      dict(n=6144, bits=8, rotation_n=6144, rotation_seed=0, smooth=1, group_size=128, rank=32, svd_l_p=2,
           svd_l_q=32, b_transposed=1)]


def compiled(gemms, rqs) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    run = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(gemms), json.dumps(rqs)], env=env,
                         capture_output=True, text=True, timeout=3000, cwd="/")
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def check(out: dict) -> None:
    for g in out["gemm"]:
        a_mode = 2 if not g["attrs"]["abits"] else (0 if g["attrs"]["abits"] <= 4 else 1)
        assert feasible(g, a_mode), g  # 48 KiB, no spills (both compiles), async copies and int8 wgmma in a loop
    for r in out["rq"]:
        for path in ("triton", "trt-aot"):
            f = r[path]
            assert f["shared_bytes"] <= SHARED_LIMIT and f["spill_bytes"] == 0 and f["blocks_per_sm"] >= 2, r


def test_medium_configurations_fit_hopper_and_tensorrt():
    check(compiled([dataclasses.asdict(a) for a in MEDIUM], RQ))


@pytest.mark.slow
def test_every_table_row_fits():
    widths = [dict(RQ[0], bits=b, group_size=g) for b in (4, 8) for g in (0, 128)]
    widths += [dict(RQ[1], bits=b, group_size=g) for b in (4, 8) for g in (0, 128)] + [dict(RQ[0], bits=0)]
    check(compiled(None, widths))

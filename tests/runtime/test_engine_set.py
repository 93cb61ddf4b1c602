import json
import shutil

import numpy as np
import pytest
from qdit4sr_export.runtime.engine_set import EngineSet

from qdit4sr_export.engine import format as engine_format
from qdit4sr_export.engine.format import SAMPLE_BLOCK_BYTES, check_files, file_entry
from qdit4sr_export.errors import UserError


def test_load_and_lookup(engine_sets):
    _, w8, plan = engine_sets
    engine = EngineSet.load(w8, verify="full")
    assert len(engine.variants) >= 2
    # every grid timestep maps to the variant that serves that step
    for step, t in enumerate(engine.timesteps):
        assert step in engine.variant_for_timestep(t).steps
    assert engine.variant_for_timestep(0.0) is engine.variant_for_timestep(engine.timesteps[-1])
    assert engine.variant_for_timestep(1000.0) is engine.variant_for_timestep(engine.timesteps[0])
    assert engine.plan_path.is_file() and engine.shift() == 3.0
    # each variant records every planned layer's bits at its steps, as the plan schedules them
    for v in engine.variants:
        assert set(v.layers) == set(plan.layers)
        for name, (wbits, abits) in v.layers.items():
            assert wbits == plan.layers[name].wbits and abits == plan.layers[name].abits[v.steps[0]]


def test_weights_index_reads_what_the_graphs_use(engine_sets):
    """Every tensor in the index is readable by name and holds the bytes the ONNX graphs reference."""
    import onnx
    from onnx import numpy_helper

    _, w8, plan = engine_sets
    engine = EngineSet.load(w8)
    graph = onnx.load(str(w8 / engine.variants[0].file), load_external_data=True).graph
    stored = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    checked = 0
    for name in engine.weights.names():
        if name in stored:
            np.testing.assert_array_equal(np.asarray(engine.weights.array(name)), stored[name])
            checked += 1
    assert checked > 20
    # every planned layer the graph computes (dead ones are not traced) has its stored tensors named in the
    # manifest and present in the index
    assert set(engine.quantized_layers) == {n for n, lp in plan.layers.items() if lp.active}
    for layer, row in engine.quantized_layers.items():
        names = [*row["codes"].values(), *row["scales"].values(), *(row["svd_g"] or []), *(row["svd_l"] or [])]
        assert names and all(n in engine.weights for n in names), layer


def test_damaged_sets_are_rejected(engine_sets, tmp_path):
    fp, _, _ = engine_sets
    bad = tmp_path / "bad"
    shutil.copytree(fp, bad)
    with pytest.raises(UserError, match="no manifest"):
        EngineSet.load(tmp_path)
    weights = bad / "weights.bin"
    data = bytearray(weights.read_bytes())
    data[100] ^= 0xFF
    weights.write_bytes(bytes(data))
    EngineSet.load(bad, verify="size")  # same size: only a checksum sees it
    with pytest.raises(UserError, match="damaged"):
        EngineSet.load(bad)  # the default check: a small file is hashed in full
    weights.write_bytes(bytes(data[:-1]))
    with pytest.raises(UserError, match="bytes"):
        EngineSet.load(bad)
    weights.unlink()
    with pytest.raises(UserError, match="missing"):
        EngineSet.load(bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["version"] = 1
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="version 1 is not supported.*rebuild"):
        EngineSet.load(bad)


def test_large_files_get_a_sampled_check(tmp_path, monkeypatch):
    """Above the full-check size the default samples blocks: damage in a sampled block is caught, damage
    between samples only by the full check."""
    monkeypatch.setattr(engine_format, "FULL_CHECK_MAX_BYTES", 1 << 16)
    monkeypatch.setattr(engine_format, "SAMPLE_BLOCKS", 8)
    path = tmp_path / "weights.bin"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 1 << 20, dtype=np.uint8).tobytes())
    entry = file_entry(tmp_path, path)
    assert "sampled_sha256" in entry
    total = (1 << 20) // SAMPLE_BLOCK_BYTES
    data = bytearray(path.read_bytes())
    between = (total // 8 // 2) * SAMPLE_BLOCK_BYTES + 7  # inside block 16: not one of the 8 sampled
    data[between] ^= 1
    path.write_bytes(bytes(data))
    check_files(tmp_path, [entry], "quick")
    with pytest.raises(UserError, match="damaged"):
        check_files(tmp_path, [entry], "full")
    data[between] ^= 1
    data[(total // 8) * SAMPLE_BLOCK_BYTES + 5] ^= 1  # inside sampled block 32
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="sampled sha256"):
        check_files(tmp_path, [entry], "quick")

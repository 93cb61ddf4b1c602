import json

import pytest

from qdit4sr_export.errors import UserError
from qdit4sr_export.runtime.engine_set import EngineSet


def test_load_and_lookup(engine_sets):
    _, w8, plan = engine_sets
    engine = EngineSet.load(w8, verify=True)
    assert len(engine.variants) >= 2
    # every grid timestep maps to the variant that serves that step
    for step, t in enumerate(engine.timesteps):
        assert step in engine.variant_for_timestep(t).steps
    assert engine.variant_for_timestep(0.0) is engine.variant_for_timestep(engine.timesteps[-1])
    assert engine.variant_for_timestep(1000.0) is engine.variant_for_timestep(engine.timesteps[0])
    assert engine.plan_path.is_file() and engine.shift() == 3.0


def test_damaged_sets_are_rejected(engine_sets, tmp_path):
    import shutil

    fp, _, _ = engine_sets
    bad = tmp_path / "bad"
    shutil.copytree(fp, bad)
    with pytest.raises(UserError, match="no manifest"):
        EngineSet.load(tmp_path)
    weights = bad / "weights.bin"
    data = bytearray(weights.read_bytes())
    data[100] ^= 0xFF
    weights.write_bytes(bytes(data))
    EngineSet.load(bad)  # same size: only the checksum sees it
    with pytest.raises(UserError, match="sha256"):
        EngineSet.load(bad, verify=True)
    weights.write_bytes(bytes(data[:-1]))
    with pytest.raises(UserError, match="bytes"):
        EngineSet.load(bad)
    weights.unlink()
    with pytest.raises(UserError, match="missing"):
        EngineSet.load(bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["version"] = 99
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="version"):
        EngineSet.load(bad)

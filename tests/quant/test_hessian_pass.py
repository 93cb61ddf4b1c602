"""The block-by-block Hessian pass: the same Hessians as one hooked pass over the whole model, from an in-memory
model and from a lazily opened checkpoint (one block in memory at a time), the model left as it was."""

import torch
from helpers import seeded_model

from qdit4sr_export.model.loading import open_dit4sr, save_dit4sr
from qdit4sr_export.model.weights import lazy_copy, materialize
from qdit4sr_export.quant.accounting import quantizable_linears
from qdit4sr_export.quant.calibration import CalibrationInputs, Hessians, collect
from qdit4sr_export.quant.hessian_pass import (
    block_hessians,
    first_samples,
    recording_block_inputs,
    trajectory_block_inputs,
)

TRAJECTORY = {"steps": 3, "shift": 3.0, "start_sigma": 1.0, "seed": 0}


def _calibration(model, n=3):
    lr = torch.randn(n, model.config.in_channels, 8, 8, generator=torch.Generator().manual_seed(1))
    return CalibrationInputs.with_null_prompt(lr, model.config)


def _blockwise(model, calls, names):
    found, sizes = {}, []

    def on_block(hessians):
        sizes.append(len(hessians))
        found.update(hessians)
    block_hessians(model, calls, names, on_block)
    return found, sizes


def _whole_pass(model, calib, names):
    whole = Hessians(names)
    with recording_block_inputs(model) as calls:
        collect(model, calib, [whole], batch_size=2, **TRAJECTORY)
    return calls, whole.result()


def test_block_by_block_equals_one_pass_over_the_model(tmp_path):
    model = seeded_model("dit4sr-tiny").eval()
    calib = _calibration(model)
    names = list(quantizable_linears(model))
    calls, expected = _whole_pass(model, calib, names)
    assert len(calls) == 2 * 3  # two batches, three steps each
    found, sizes = _blockwise(model, calls, names)
    assert len(sizes) == model.config.num_layers and max(sizes) < len(names)  # handed over one block at a time
    assert found.keys() == expected.keys() and len(found) < len(names)  # attn2's text projections never run
    assert all(torch.equal(found[n], expected[n]) for n in expected)

    # A lazily opened checkpoint: the trajectory streamed one block at a time, then the same Hessians as one pass
    # of the checkpoint loaded whole.
    lazy = open_dit4sr(save_dit4sr(model, tmp_path / "ckpt"))
    calls, expected = _whole_pass(materialize(lazy_copy(lazy)), calib, names)
    streamed = trajectory_block_inputs(lazy, calib, batch_size=2, **TRAJECTORY)
    assert len(streamed) == len(calls)
    assert all(torch.equal(a, b) for got, want in zip(streamed, calls) for a, b in zip(got[:3], want[:3]))
    from_lazy, _ = _blockwise(lazy, streamed, names)
    assert from_lazy.keys() == expected.keys()
    assert all(torch.equal(from_lazy[n], expected[n]) for n in expected)
    assert all(p.device.type == "meta" for p in lazy.parameters())  # the opened model itself is untouched


def test_first_samples_are_the_leading_rows_of_the_first_batches():
    model = seeded_model("dit4sr-tiny").eval()
    calib = _calibration(model, n=5)
    with recording_block_inputs(model) as calls:
        collect(model, calib, [], batch_size=2, **TRAJECTORY)  # batches of 2, 2 and 1 sample, 3 steps each
    with recording_block_inputs(model) as head:
        collect(model, calib.head(3), [], batch_size=2, **TRAJECTORY)
    picked = first_samples(calls, 3, steps_run=3)
    assert len(picked) == len(head) == 6  # a batch of 1 runs other kernels than a batch of 2: equal to float noise
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-5) for got, want in zip(picked, head)
               for a, b in zip(got[:3], want[:3]))
    assert [int(c[0].shape[0]) for c in picked] == [2, 2, 2, 1, 1, 1]
    assert first_samples(calls, 0, steps_run=3) == calls and len(first_samples(calls, 99, steps_run=3)) == 9

"""GPTQ Hessians one transformer block at a time, so a released-size model never holds more than one block's
weights and Hessians.

The trajectory a plan calibrates on is recorded as the first block's inputs of every forward call (tokens, text,
time embedding, grid: a few MB per call). Methods record them on the calibration pass they already run
(:func:`recording_block_inputs`); a method with no such pass runs the FP trajectory itself
(:func:`trajectory_block_inputs`, streamed block by block from a lazily opened checkpoint). :func:`block_hessians`
then runs the FP blocks in order over the recorded calls, each block's outputs feeding the next, accumulates
``H = 2 X^T X / N`` of every input of the block's linears, and hands them over block by block. The activations
are the FP model's at the recorded states, exactly those of one pass of the FP model over them.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from qdit4sr_export.quant.calibration import CalibrationInputs, Hessians, run_trajectory, watching

#: One forward call's inputs to the first block: (tokens, text tokens, time embedding, patch grid).
BlockCall = tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, int] | None]


@contextmanager
def recording_block_inputs(model: nn.Module) -> Iterator[list[BlockCall]]:
    """Record the first transformer block's inputs of every forward call of ``model`` while the context is open."""
    calls: list[BlockCall] = []

    def record(module, args):
        grid = tuple(args[3]) if len(args) > 3 and args[3] is not None else None
        calls.append((args[0].detach().clone(), args[1].detach().clone(), args[2].detach().clone(), grid))

    handle = model.transformer_blocks[0].register_forward_pre_hook(record)
    try:
        yield calls
    finally:
        handle.remove()


def _is_lazy(model: nn.Module) -> bool:
    from qdit4sr_export.model.weights import on_meta

    return on_meta(model)


def _streamed(model: nn.Module, latent_side: int) -> nn.Module:
    """A copy of a lazily opened model that runs: everything but the blocks loaded (float32), each block loaded
    before its forward call and released after it."""
    from qdit4sr_export.model.weights import lazy_copy, materialize, materialize_part

    twin = materialize(lazy_copy(model, latent_side=latent_side), skip=("transformer_blocks",))

    def load(i: int):
        def hook(module, args) -> None:
            materialize_part(twin, f"transformer_blocks.{i}")
        return hook

    def release(module, args, out) -> None:
        module.to("meta")

    for i, block in enumerate(twin.transformer_blocks):
        block.register_forward_pre_hook(load(i))
        block.register_forward_hook(release)
    return twin


def trajectory_block_inputs(model: nn.Module, calibration: CalibrationInputs, *, progress: bool = False,
                            **trajectory) -> list[BlockCall]:
    """One calibration trajectory of the FP ``model`` (``trajectory``: :func:`run_trajectory`'s grid, start sigma
    and seed), recording the first block's inputs; a lazily opened model runs streamed, one block in memory."""
    runner = _streamed(model, calibration.lr_latent.shape[-1]) if _is_lazy(model) else model
    with recording_block_inputs(runner) as calls:
        run_trajectory(runner, calibration, progress=progress, **trajectory)
    return calls


def first_samples(calls: Sequence[BlockCall], count: int, steps_run: int) -> list[BlockCall]:
    """The recorded calls of the first ``count`` calibration samples (0: all). A trajectory runs its samples in
    batches, all ``steps_run`` steps of a batch before the next, so calls come in groups of ``steps_run``; blocks
    treat samples independently, so a batch's first samples are the leading rows of its calls."""
    if count <= 0:
        return list(calls)
    out, taken = [], 0
    for start in range(0, len(calls), steps_run):
        batch = calls[start:start + steps_run]
        k = min(int(batch[0][0].shape[0]), count - taken)
        if k <= 0:
            break
        out += [(tokens[:k], context[:k], temb[:k], grid) for tokens, context, temb, grid in batch]
        taken += k
    return out


def block_hessians(model: nn.Module, calls: Sequence[BlockCall], layers: Sequence[str],
                   on_block: Callable[[dict[str, torch.Tensor]], None], *,
                   transforms: dict[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
                   progress: bool = False) -> None:
    """Run the FP blocks of ``model`` in order over ``calls`` and give ``on_block`` the Hessians of the ``layers``
    in each block that ran (float64, ``in x in``; of ``transforms[name](x)`` where given), one block at a time; the
    model itself is not changed (a lazily opened one is read into a copy, one block at a time)."""
    from qdit4sr_export.model.weights import lazy_copy, materialize_part
    from qdit4sr_export.report.progress import progress_bar

    lazy = _is_lazy(model)
    work = lazy_copy(model) if lazy else model
    wanted = list(layers)
    states = list(calls)
    blocks = list(enumerate(work.transformer_blocks))
    with torch.inference_mode():
        for i, block in progress_bar(blocks, enabled=progress, desc="GPTQ Hessians", unit="block", leave=False):
            prefix = f"transformer_blocks.{i}."
            if lazy:
                materialize_part(work, f"transformer_blocks.{i}")
            stat = Hessians([n for n in wanted if n.startswith(prefix)], transforms)
            with watching(work, [stat]):
                states = [_run_block(block, call) for call in states]
            if lazy:
                block.to("meta")
            on_block(stat.result())
            del stat


def _run_block(block: nn.Module, call: BlockCall) -> BlockCall:
    tokens, context, temb, grid = call
    context, tokens = block(tokens, context, temb, grid)
    return tokens, context, temb, grid

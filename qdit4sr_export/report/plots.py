"""PNG plots of a QuantPlan (needs the ``plots`` extra, matplotlib): the VaTMP activation-bit heatmap over
blocks x timesteps (the paper's Fig. 9), one layer's activation variance with its bits (Fig. 6) and the per-layer
VaSMP weight bits. Grid steps that a run never executes (before its start sigma) are drawn apart, in grey."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from qdit4sr_export.errors import UserError
from qdit4sr_export.quant.accounting import mean_wbits

_BLOCK = re.compile(r"transformer_blocks\.(\d+)\.")


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise UserError("plots need matplotlib: pip install 'qdit4sr-export[plots]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def block_abits(plan) -> tuple[list[int], np.ndarray]:
    """(block indices, mean activation bits [blocks, steps]) over each block's layers with activation bits."""
    rows: dict[int, list[tuple[float, ...]]] = {}
    for name, lp in plan.layers.items():
        m = _BLOCK.search(name)
        if m is None or not lp.abits or any(b is None for b in lp.abits):
            continue
        rows.setdefault(int(m.group(1)), []).append(tuple(float(b) for b in lp.abits))
    if not rows:
        raise UserError("the plan has no per-step activation bits to plot")
    blocks = sorted(rows)
    return blocks, np.array([np.mean(rows[b], axis=0) for b in blocks])


def _not_run(runs: dict | None, steps: int) -> list[int]:
    """Grid steps that a run never executes (``runs``: ``report.inspect.run_window``'s answer, or None)."""
    if runs is None:
        return []
    if len(runs["runs"]) != steps:
        raise UserError(f"run window has {len(runs['runs'])} steps, the plan {steps}")
    return [i for i, ran in enumerate(runs["runs"]) if not ran]


def _run_note(runs: dict | None, skipped: list[int]) -> str:
    return f"grey: not run (start sigma {runs['start_sigma']})" if skipped else ""


def plot_abits_heatmap(plan, path: str | Path, *, title: str = "", runs: dict | None = None) -> Path:
    """Mean activation bits per block (rows) and denoising step (columns, timestep labels); steps a run never
    executes are grey and left out of the colour scale."""
    plt = _pyplot()
    blocks, grid = block_abits(plan)
    skipped = _not_run(runs, grid.shape[1])
    shown = np.ma.masked_array(grid, mask=np.zeros_like(grid, dtype=bool))
    shown.mask[:, skipped] = True
    if shown.mask.all():
        shown.mask[:] = False
    cmap = plt.get_cmap("viridis").with_extremes(bad="lightgrey")
    fig, ax = plt.subplots(figsize=(max(4.0, 0.25 * grid.shape[1] + 2), max(2.5, 0.35 * len(blocks) + 1.5)))
    im = ax.imshow(shown, aspect="auto", cmap=cmap, interpolation="nearest")
    if skipped and len(skipped) < grid.shape[1]:
        ax.axvline(max(skipped) + 0.5, color="black", lw=1)
    ticks = np.linspace(0, grid.shape[1] - 1, min(grid.shape[1], 8)).round().astype(int)
    ax.set_xticks(ticks, [f"{plan.timesteps[i]:.0f}" for i in ticks], rotation=45)
    ax.set_yticks(range(len(blocks)), [str(b) for b in blocks])
    note = _run_note(runs, skipped)
    ax.set_xlabel("timestep (denoising proceeds to the right)" + (f"; {note}" if note else ""), fontsize=9)
    ax.set_ylabel("block")
    ax.set_title(title or "VaTMP activation bits (block mean)", fontsize=10)
    fig.colorbar(im, ax=ax, label="bits")
    return _save(fig, plt, path)


def plot_weight_bits(plan, path: str | Path, *, title: str = "") -> Path:
    """VaSMP weight bits of every quantized layer, in model order."""
    plt = _pyplot()
    names = [n for n, lp in plan.layers.items() if lp.wbits is not None]
    if not names:
        raise UserError("the plan has no quantized weights to plot")
    bits = [plan.layers[n].wbits for n in names]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.06 * len(names) + 2), 3))
    ax.bar(range(len(names)), bits, width=1.0, color="tab:blue")
    starts = [i for i, n in enumerate(names) if _BLOCK.search(n) and (i == 0 or _BLOCK.search(names[i - 1]) is None
                                                                    or _BLOCK.search(n).group(1) != _BLOCK.search(names[i - 1]).group(1))]
    for i in starts:
        ax.axvline(i - 0.5, color="grey", lw=0.5)
    ax.set_xlabel("layer (model order; lines separate blocks)")
    ax.set_ylabel("weight bits")
    ax.set_ylim(0, max(bits) + 1)
    ax.set_title(title or f"VaSMP weight bits (mean {mean_wbits(plan):.2f} per weight)", fontsize=10)
    return _save(fig, plt, path)


def plot_act_variance(plan, layer: str, path: str | Path, *, runs: dict | None = None) -> Path:
    """VaTMP's activation variance v(l, t) of ``layer`` over the timesteps, with the chosen bits shaded (Fig. 6);
    steps a run never executes are hatched grey."""
    plt = _pyplot()
    lp = plan.layers.get(layer)
    if lp is None:
        raise UserError(f"--layer {layer}: not a layer of the plan")
    if lp.act_variance is None:
        raise UserError(f"--layer {layer}: the plan has no activation variance for it (VaTMP did not run)")
    steps = np.arange(len(lp.act_variance))
    skipped = set(_not_run(runs, len(steps)))
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    bits = [b if b is not None else 0 for b in lp.abits]
    levels = sorted({b for i, b in enumerate(bits) if i not in skipped} or set(bits))
    cmap = plt.get_cmap("Blues", len(levels) + 2)
    for i, b in enumerate(bits):
        if i in skipped:
            ax.axvspan(i - 0.5, i + 0.5, facecolor="lightgrey", edgecolor="grey", hatch="//", lw=0)
        else:
            ax.axvspan(i - 0.5, i + 0.5, color=cmap(levels.index(b) + 1), alpha=0.6, lw=0)
    variance = [np.nan if x is None else x for x in lp.act_variance]  # None: a step calibration never ran
    ax.plot(steps, variance, color="black", marker="o", ms=3)
    ax.set_yscale("log")
    ticks = np.linspace(0, len(steps) - 1, min(len(steps), 8)).round().astype(int)
    ax.set_xticks(ticks, [f"{plan.timesteps[i]:.0f}" for i in ticks])
    ax.set_xlabel("timestep")
    ax.set_ylabel("activation variance")
    handles = [plt.Rectangle((0, 0), 1, 1, color=cmap(levels.index(b) + 1), alpha=0.6) for b in levels]
    labels = [f"{b} bits" if b else "float" for b in levels]
    if skipped:
        handles.append(plt.Rectangle((0, 0), 1, 1, facecolor="lightgrey", edgecolor="grey", hatch="//"))
        labels.append("not run")
    ax.legend(handles, labels, fontsize=7, loc="best")
    ax.set_title(f"{layer}\nactivation variance and VaTMP bits", fontsize=9)
    return _save(fig, plt, path)


def _save(fig, plt, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return path

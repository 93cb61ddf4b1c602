import numpy as np
import torch
from torch import nn

from qdit4sr_export.model.sampling import flow_schedule
from qdit4sr_export.quant.beam import BeamConfig, beam_search
from qdit4sr_export.quant.calibration import CalibrationInputs
from qdit4sr_export.quant.temporal import PathErrors, fisher_sensitivity, fp_trajectory


class Diagonal(nn.Module):
    """v = a * x per channel: a model whose trajectory Jacobians are known in closed form."""

    def __init__(self, a: torch.Tensor) -> None:
        super().__init__()
        self.a = nn.Parameter(a)
        self.calls = 0

    def forward(self, x, lr, text, pooled, t):
        self.calls += 1
        return self.a.view(1, -1, 1, 1) * x + 0.1 * lr


def inputs(n=5, channels=3, side=4, seed=0):
    lr = torch.randn(n, channels, side, side, generator=torch.Generator().manual_seed(seed))
    return CalibrationInputs(lr, torch.zeros(n, 1, 2), torch.zeros(n, 2))


def test_fisher_sensitivity_is_the_first_order_noise_response():
    """With v = a x + c, x_final depends on x_{k+1} through prod_{j>k} (1 + d_j a): the estimate must equal
    d_k^2 ||u * prod||^2 / D for the seeded probe u, exactly."""
    model = Diagonal(torch.tensor([-0.5, 0.3, 1.2]))
    data = inputs()
    traj = fp_trajectory(model, data, [], steps=6, shift=3.0, start_sigma=0.6, seed=0, batch_size=2)
    assert traj.first > 0 and len(traj.states[traj.first]) == 3  # batches of 2, 2, 1
    sens = fisher_sensitivity(model, traj, [], seed=11)
    _, sigmas = flow_schedule(6)
    g = torch.Generator().manual_seed(11)
    u = torch.cat([torch.randn(f.shape, generator=g) for f in traj.final]).double()
    for k in range(traj.first, 6):
        prod = torch.ones(3, dtype=torch.float64)
        for j in range(k + 1, 6):
            prod = prod * (1 + float(sigmas[j + 1] - sigmas[j]) * model.a.detach().double())
        d = float(sigmas[k + 1] - sigmas[k])
        expected = d * d * float((u * prod.view(1, -1, 1, 1)).pow(2).sum()) / u.numel()
        assert abs(sens[k - traj.first] - expected) <= 1e-5 * expected
    assert all(p.requires_grad for p in model.parameters())  # restored


def test_fp_trajectory_keeps_the_state_before_each_step():
    model = Diagonal(torch.tensor([0.1, 0.2, 0.3]))
    data = inputs()
    traj = fp_trajectory(model, data, [], steps=5, shift=3.0, start_sigma=1.0, seed=3)
    x = traj.states[2][0]
    step = traj.args(2, 0, x)
    with torch.no_grad():
        following = x + traj.delta(2) * model(*step)
    torch.testing.assert_close(following, traj.states[3][0])
    sub = traj.subset(3)
    assert sub.states[0][0].shape[0] == 3 and torch.equal(sub.final[0], traj.final[0][:3])


class Bent(nn.Module):
    """A small nonlinear stand-in for a simulated model: v = tanh(s * x) + 0.1 lr."""

    def __init__(self, s: float) -> None:
        super().__init__()
        self.s = s

    def forward(self, x, lr, text, pooled, t):
        return torch.tanh(self.s * x) + 0.1 * lr


def test_cached_path_errors_give_the_uncached_search_in_linear_steps():
    """The beam search over cached prefix states finds the same path, errors and front as re-running every prefix
    from the start, with one model step per evaluated prefix (uncached: one per prefix element)."""
    steps = 6
    traj = fp_trajectory(Bent(1.0), inputs(n=10), [], steps=steps, shift=3.0, start_sigma=1.0, seed=0)
    models = [Bent(s) for s in (0.8, 0.95, 1.3)]  # none is the FP model
    config = BeamConfig(beam_width=2, budget=1.0)
    bits = [0.9, 1.0, 1.1]
    cached, uncached = PathErrors(models, traj), PathErrors(models, traj, cached=False)
    a = beam_search(steps, bits, cached, config)
    b = beam_search(steps, bits, uncached, config)
    assert a.best == b.best and a.best_error == b.best_error and a.front == b.front
    assert cached.calls == 2 * a.evaluations  # one step per prefix, in 2 batches (10 samples, batches of 8)
    assert uncached.calls > 2 * cached.calls
    assert len(cached.latents) <= 1 + 2 * 2 * len(models)  # only the last two prefix lengths are kept
    assert np.isfinite(a.best_error) and a.best_error > 0

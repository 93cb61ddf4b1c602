"""Flow-matching Euler sampling: schedule, start index and an exact linear-velocity check."""

import pytest
import torch

from qdit4sr_export.errors import UserError
from qdit4sr_export.model.sampling import euler_sample, flow_schedule, start_index


def test_schedule_shape_and_shift():
    timesteps, sigmas = flow_schedule(10)
    assert timesteps.shape == (10,) and sigmas.shape == (11,)
    assert float(sigmas[0]) == pytest.approx(1.0) and float(sigmas[-1]) == 0.0
    assert torch.all(sigmas[1:] < sigmas[:-1])
    plain = flow_schedule(10, shift=1.0)[1]
    assert torch.all(sigmas[1:-1] > plain[1:-1])  # shift 3 spends more steps at high noise


def test_start_index_and_bad_start():
    _, sigmas = flow_schedule(20)
    i = start_index(sigmas, 0.3)
    assert float(sigmas[i]) <= 0.3 + 1e-6 < float(sigmas[i - 1])
    assert start_index(sigmas, 1.0) == 0
    with pytest.raises(UserError, match="start-sigma"):
        start_index(sigmas, 0.0)


def test_euler_with_the_exact_velocity_lands_on_the_target():
    """For x_s = (1 - s) x0 + s n the true velocity is n - x0; Euler recovers x0 exactly from any start."""
    x0 = torch.randn(1, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    lr = x0 + 0.1
    seen = []

    for start in (1.0, 0.3):
        noise = torch.randn(lr.shape, generator=torch.Generator().manual_seed(5))
        _, sigmas = flow_schedule(8)
        s0 = float(sigmas[start_index(sigmas, start)])
        n = ((1 - s0) * lr + s0 * noise - (1 - s0) * x0) / s0  # the noise that makes the start point x_{s0} of x0

        def velocity(x, t):
            return n - x0

        out = euler_sample(velocity, lr, steps=8, start_sigma=start, generator=torch.Generator().manual_seed(5),
                           on_step=lambda i, t: seen.append((i, t)))
        assert torch.allclose(out, x0, atol=1e-5)
    assert seen[0][0] == 0 and seen[8][0] > 0  # the second run skipped the high-noise steps

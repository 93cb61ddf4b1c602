import torch

from qdit4sr_export.model import build_dit4sr
from qdit4sr_export.model.synthetic import heavy_tailed_


def test_heavy_tailed_weights_are_seeded_and_heavy_tailed():
    a = heavy_tailed_(build_dit4sr("dit4sr-tiny"), seed=1)
    b = heavy_tailed_(build_dit4sr("dit4sr-tiny"), seed=1)
    w = a.transformer_blocks[0].ff.net[2].weight.detach()
    assert torch.equal(w, b.transformer_blocks[0].ff.net[2].weight)
    kurtosis = float((w - w.mean()).pow(4).mean() / w.var().pow(2))
    assert kurtosis > 6  # a Gaussian has 3
    column_rms = w.pow(2).mean(0).sqrt()
    assert column_rms.max() > 4 * column_rms.median()  # outlier input channels
    other = heavy_tailed_(build_dit4sr("dit4sr-tiny"), seed=2)
    assert not torch.equal(w, other.transformer_blocks[0].ff.net[2].weight)

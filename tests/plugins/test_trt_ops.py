"""The plugin ops' plain-Python contract: attributes round-trip with the types TensorRT's parser passes, shapes."""

import pytest
from qdit4sr_export.plugins.trt_ops import LowbitGemmAttrs, RotateQuantizeAttrs

from qdit4sr_export.errors import UserError


def test_attributes_round_trip_with_parser_types():
    rq = RotateQuantizeAttrs(n=192, bits=4, clip="gaussian", group_size=64, rotation_n=192, rotation_seed=3,
                             smooth=1, rank=32, svd_l_p=4, svd_l_q=6)
    attrs = rq.to_attributes()
    assert attrs["plugin_namespace"] == "qdit4sr" and attrs["plugin_version"] == "1" and attrs["aot"] == 1
    assert all(isinstance(v, (int, float, str)) for v in attrs.values())
    assert RotateQuantizeAttrs.from_attributes({**attrs, "clip": b"gaussian"}) == rq  # parsers may hand bytes
    gm = LowbitGemmAttrs(k=192, n=64, abits=4, wbits=4, group_size=64, rank=32, svd_l_p=4, svd_l_q=6, svd_l_so=16,
                         bias=1)
    assert LowbitGemmAttrs.from_attributes(gm.to_attributes(aot=False)) == gm
    with pytest.raises(UserError, match="missing attribute"):
        LowbitGemmAttrs.from_attributes({"k": 4})


def test_output_shapes_follow_the_attributes():
    lead = ("B", "L")
    rq = RotateQuantizeAttrs(n=192, bits=4, group_size=64, rank=8, svd_l_p=4, svd_l_q=6)
    assert rq.output_shapes(lead) == [("B", "L", 96), ("B", "L", 3), ("B", "L", 8), ("B", "L", 4, 6), (1,)]
    assert RotateQuantizeAttrs(n=192, bits=6).output_shapes(lead)[:2] == [("B", "L", 192), ("B", "L", 1)]
    floats = RotateQuantizeAttrs(n=192, bits=0).output_shapes(lead)
    assert floats[0] == (1,) and floats[4] == ("B", "L", 192)
    assert LowbitGemmAttrs(k=192, n=64, abits=4, wbits=4).weight_shape() == (192, 32)
    assert LowbitGemmAttrs(k=192, n=64, abits=8, wbits=8).weight_shape() == (192, 64)


@pytest.mark.parametrize("kwargs, message", [
    ({"n": 192, "bits": 9}, "not in 2..8"), ({"n": 191, "bits": 4}, "odd"), ({"n": 192, "bits": 4, "clip": "max"}, "clip"),
    ({"n": 192, "bits": 4, "group_size": 100}, "does not divide")])
def test_bad_attributes_are_named(kwargs, message):
    with pytest.raises(UserError, match=message):
        RotateQuantizeAttrs(**kwargs)

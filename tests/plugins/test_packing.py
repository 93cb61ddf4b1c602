import numpy as np
import pytest
import torch
from qdit4sr_export.passes.lower_ort import _code_tensor
from qdit4sr_export.plugins.packing import decode_weight, pack_int4, stored_weight_bytes, unpack_int4

from qdit4sr_export.errors import UserError


def test_pack_roundtrip_every_nibble():
    codes = torch.arange(-8, 8, dtype=torch.int8).repeat(3, 2)  # every value at even and odd positions
    codes = torch.cat([codes, codes.roll(1, dims=1)], 0)
    packed = pack_int4(codes)
    assert packed.dtype == torch.uint8 and packed.shape == (6, 16)
    assert torch.equal(unpack_int4(packed), codes)
    assert int(pack_int4(torch.tensor([[-1, 2]], dtype=torch.int8))[0, 0]) == 0x2F  # low nibble first


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 7, 8])
def test_stored_bytes_are_what_the_engine_set_writes(bits):
    """The kernels read the ORT lowering's initializers byte for byte (INT4 packed, INT8, UINT8 + 128)."""
    q = 2 ** (bits - 1) - 1
    codes = torch.randint(-q, q + 1, (6, 10), generator=torch.Generator().manual_seed(bits), dtype=torch.int8)
    onnx_bytes = np.frombuffer(_code_tensor(codes, bits, "w").tobytes(), np.uint8)
    ours = stored_weight_bytes(codes, bits)
    assert np.array_equal(ours.numpy().view(np.uint8).ravel(), onnx_bytes)
    assert torch.equal(decode_weight(ours, bits, 6, 10), codes)


def test_decode_refuses_odd_int4_columns_and_wrong_shapes():
    with pytest.raises(UserError, match="layer 'x'.*odd N"):
        decode_weight(torch.zeros(4, 3, dtype=torch.uint8), 4, 4, 7, "x")
    with pytest.raises(UserError, match=r"torch.int8 \(4, 6\)"):
        decode_weight(torch.zeros(4, 3, dtype=torch.int8), 6, 4, 6)

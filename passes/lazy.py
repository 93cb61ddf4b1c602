"""Lazy initializers for the weight-transforming passes: each derived tensor (rotation-folded weight, H-SVD factors
and residual, quantized codes and scales) is an ``ir.LazyTensor`` computed when the engine-set writer (or a
serializer) reads it, from its inputs' lazy tensors, so no pass holds a second copy of the model's weights.

The writer stores tensors sorted by name, so a layer's tensors (``<layer>.bias``, ``.svd_g.*``, ``.svd_l.*``,
``.wq*``, ``.wscale*``) are read one after another; a :class:`LayerCache` of the last few layers' results makes
each layer's rotate -> H-SVD -> quantize run once. Out-of-order reads only recompute (same values).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Hashable

import numpy as np
import onnx_ir as ir
import torch


class LayerCache:
    """The results of the last ``size`` keys (an LRU), computed on first use."""

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self.computed = 0  # how many results were computed (a layer computed twice shows here)

    def get(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        value = compute()
        self.computed += 1
        self._items[key] = value
        while len(self._items) > self.size:
            self._items.popitem(last=False)
        return value


def lazy(name: str, dtype: ir.DataType, shape, make: Callable[[], np.ndarray | ir.TensorProtocol]) -> ir.LazyTensor:
    """A lazy tensor ``name`` of known type and shape whose data ``make`` returns (a numpy array or a tensor)."""
    def evaluate() -> ir.TensorProtocol:
        data = make()
        if isinstance(data, ir.TensorProtocol):
            return data
        return ir.tensor(np.ascontiguousarray(data), dtype=dtype, name=name)
    return ir.LazyTensor(evaluate, dtype, ir.Shape(shape), name=name)


def float_weight(tensor: ir.TensorProtocol | np.ndarray) -> torch.Tensor:
    """A float32 torch copy of an initializer's data (evaluating it when lazy)."""
    data = tensor if isinstance(tensor, np.ndarray) else tensor.numpy()
    return torch.from_numpy(np.array(data, dtype=np.float32))

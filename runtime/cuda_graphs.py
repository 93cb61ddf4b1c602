"""CUDA graphs keyed by what changes the kernel sequence (variant, input shapes): captured once, replayed after.

A denoising step launches hundreds of small kernels (two per quantized linear, plus norms and attention);
replaying a captured graph removes their launch overhead. Inputs are copied into the graph's static buffers;
the output is cloned out of the graph's pool before the next replay overwrites it.
"""

from __future__ import annotations

from typing import Callable, Hashable

import torch


class GraphCache:
    """``cache(key, args)`` runs ``forward(*args)`` through the CUDA graph captured for ``key``."""

    def __init__(self, forward: Callable[..., torch.Tensor]) -> None:
        self.forward = forward
        self.graphs: dict[Hashable, tuple[torch.cuda.CUDAGraph, list[torch.Tensor], torch.Tensor]] = {}

    def __call__(self, key: Hashable, args: list[torch.Tensor]) -> torch.Tensor:
        if key not in self.graphs:
            static = [a.clone() for a in args]
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):  # warm-up outside the capture: Triton compiles, cuBLAS sets up
                self.forward(*static)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = self.forward(*static)
            self.graphs[key] = (graph, static, out)
        graph, static, out = self.graphs[key]
        for s, a in zip(static, args):
            s.copy_(a)
        graph.replay()
        return out.clone()

    def clear(self) -> None:
        self.graphs.clear()

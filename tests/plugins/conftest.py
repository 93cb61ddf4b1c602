"""Kernel tests run compiled on a CUDA GPU when there is one, else in Triton's CPU interpreter (the root
conftest selects it before triton is imported)."""

import os

import pytest


@pytest.fixture(scope="session")
def device() -> str:
    return "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"

"""Shared fixtures: small seeded DiT4SR models."""

import pytest

from qdit4sr_export.model import DiT4SRTransformer

from helpers import seeded_model


@pytest.fixture
def tiny_model() -> DiT4SRTransformer:
    return seeded_model("dit4sr-tiny")


@pytest.fixture
def small_model() -> DiT4SRTransformer:
    return seeded_model("dit4sr-small")

"""Shared fixtures: small real checkpoints written once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Llama-style tiny demo checkpoint (random seeded weights, real BPE tokenizer)."""
    from aruntime.engine.demo import write_demo_model

    return write_demo_model(tmp_path_factory.mktemp("tiny-llama"), size="tiny")


@pytest.fixture(scope="session")
def tiny_qwen_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Qwen2-style tiny checkpoint: q/k/v projections with bias."""
    from aruntime.engine.demo import write_demo_model

    return write_demo_model(
        tmp_path_factory.mktemp("tiny-qwen"), size="tiny", architecture="Qwen2ForCausalLM"
    )

"""Shared fixtures: every checkpoint is built here, offline; nothing is downloaded."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A tiny random Kosmos-2 written by the project's own builder."""
    from kosmos_demo.tiny import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_engine(tiny_checkpoint):
    from kosmos_demo.engine import Kosmos2Engine

    return Kosmos2Engine.load(str(tiny_checkpoint), device="cpu")

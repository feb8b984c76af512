"""A load failure names what really failed: a package, a version, the checkpoint or the network.

Every failure here is a real one, raised by transformers' own ``from_pretrained``:
the kwargs that need an absent package, a config of an architecture this
transformers does not know, a broken folder, a Hub id while offline.
"""

import importlib.util
import shutil

import pytest
import transformers

from kosmos_demo import compat, engine
from kosmos_demo.engine import Kosmos2Engine, ModelLoadError

NETWORK_BLAME = ("6.6 GB", "network access")


def _load_error(source) -> str:
    with pytest.raises(ModelLoadError) as raised:
        Kosmos2Engine.load(str(source), device="cpu")
    message = str(raised.value)
    assert "\n" not in message and len(message) < 1500, message
    return message


@pytest.fixture
def copied_checkpoint(tiny_checkpoint, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(tiny_checkpoint, folder)
    return folder


def test_every_model_load_states_kernels_off(tiny_checkpoint):
    """5.25 defaults use_kernels to True; the project's loads say False and still load."""
    assert compat.LOADING == {"use_kernels": False}
    model = compat.load_kosmos2(tiny_checkpoint, attn_implementation="eager")
    assert model.use_kernels is False


@pytest.mark.skipif(importlib.util.find_spec("kernels") is not None, reason="kernels is installed here")
def test_a_missing_kernels_package_is_named_with_its_version(tiny_checkpoint, monkeypatch):
    monkeypatch.setattr(compat, "LOADING", {"use_kernels": True})  # what 5.25 does when nothing is said
    message = _load_error(tiny_checkpoint)
    assert "A Python package is missing" in message
    assert "pip install 'kernels>=" in message and f"transformers {transformers.__version__}" in message
    assert not any(blame in message for blame in NETWORK_BLAME), message


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is not None, reason="bitsandbytes is installed here")
def test_a_missing_quantization_package_is_named_with_its_version(tiny_checkpoint, monkeypatch):
    from transformers import BitsAndBytesConfig

    # past the engine's own bitsandbytes check, so that transformers' from_pretrained meets the absence itself
    monkeypatch.setattr(engine, "quantization_config", lambda quantize, dtype: BitsAndBytesConfig(load_in_8bit=True))
    message = _load_error(tiny_checkpoint)
    assert "pip install 'bitsandbytes>=" in message, message
    assert not any(blame in message for blame in NETWORK_BLAME), message


def test_an_architecture_this_transformers_does_not_know_asks_for_another_version(copied_checkpoint):
    (copied_checkpoint / "config.json").write_text('{"model_type": "kosmos-3"}')
    message = _load_error(copied_checkpoint)
    assert "The installed versions do not fit" in message
    assert f"pip install 'transformers{compat.TESTED_TRANSFORMERS}'" in message
    assert not any(blame in message for blame in NETWORK_BLAME), message


@pytest.mark.parametrize("breaks, reason", [
    ("corrupt config.json", "not a valid JSON file"),
    ("no weights file", "no file named model.safetensors"),
    ("no folder", "nowhere"),
])
def test_a_bad_checkpoint_is_blamed_not_the_network(copied_checkpoint, breaks, reason):
    source = copied_checkpoint
    if breaks == "corrupt config.json":
        (source / "config.json").write_text('{"model_type": "kosmos-2", ')
    elif breaks == "no weights file":
        (source / "model.safetensors").unlink()
    else:
        source = copied_checkpoint / "nowhere"
    message = _load_error(source)
    assert message.startswith(f"Could not load Kosmos-2 from the local folder {source}: ")
    assert reason in message and "This is not a complete, readable Kosmos-2 checkpoint" in message
    assert "--model toy" in message
    assert not any(blame in message for blame in NETWORK_BLAME), message


def test_a_hub_id_offline_is_blamed_on_the_network(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    message = _load_error("microsoft/kosmos-2-patch14-224")
    assert "HF_HUB_OFFLINE=1" in message and all(blame in message for blame in NETWORK_BLAME)
    assert "--model toy" in message

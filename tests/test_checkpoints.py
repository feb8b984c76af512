"""Which checkpoint is served, and what the page must say about it."""

from pathlib import Path
from types import SimpleNamespace

from kosmos_demo import DEFAULT_MODEL
from kosmos_demo.checkpoints import REAL, SHORTCUTS, TINY, TINY_MARKER, TOY, TOY_MARKER, kind_of, resolve_source


def test_kinds_are_told_apart_by_their_config_marker():
    assert kind_of(SimpleNamespace()) is REAL and REAL.note is None
    assert kind_of(SimpleNamespace(**{TOY_MARKER: True})) is TOY and "coloured shapes" in TOY.note
    assert kind_of(SimpleNamespace(**{TINY_MARKER: True})) is TINY and TINY.is_random and "noise" in TINY.note


def test_every_example_file_exists_and_the_toy_shows_shapes():
    for kind in (REAL, TOY, TINY):
        for image, task, text, box in kind.examples:
            assert Path(image).is_file(), image
            assert task in {"brief", "detailed", "phrase", "vqa", "region", "region-vqa", "custom"}
    assert all("toy-examples" in row[0] for row in TOY.examples)


def test_sources_resolve_shortcuts_then_the_environment_then_the_hub(monkeypatch):
    monkeypatch.delenv("KOSMOS_MODEL", raising=False)
    assert resolve_source() == DEFAULT_MODEL
    assert resolve_source("toy") == str(SHORTCUTS["toy"]) and (SHORTCUTS["toy"] / "config.json").is_file()
    monkeypatch.setenv("KOSMOS_MODEL", "/some/folder")
    assert resolve_source() == "/some/folder" and resolve_source("other/model") == "other/model"

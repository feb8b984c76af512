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


def test_hub_ids_are_told_from_folders(tmp_path, monkeypatch):
    from kosmos_demo.checkpoints import is_hub_id

    monkeypatch.chdir(tmp_path)
    assert is_hub_id("microsoft/kosmos-2-patch14-224")
    (tmp_path / "owner" / "name").mkdir(parents=True)
    assert not is_hub_id("owner/name")  # an existing folder wins, as in from_pretrained
    assert not is_hub_id("/abs/path") and not is_hub_id("./rel") and not is_hub_id("toy-folder")


def test_an_unreachable_hub_is_named_without_waiting_for_retries(monkeypatch):
    import socket

    from kosmos_demo.checkpoints import hub_unreachable

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for name in ("HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    assert hub_unreachable().startswith(f"could not reach 127.0.0.1:{port}")
    with socket.socket() as server:  # a listening endpoint is reachable
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert hub_unreachable() is None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")  # a direct probe would misjudge a proxy
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    assert hub_unreachable() is None

"""One exporter: the page's downloads, the CLI's --out folder and the batch output write the same files."""

import json
from pathlib import Path

import numpy as np
from PIL import Image

from kosmos_demo.export import export, overview, record, safe_stem, token_label
from kosmos_demo.results import Entity, Heatmaps, Result, Token


def _result(heatmaps=True) -> Result:
    tokens = (Token("<grounding>", "tag", None, False), Token(" red", "text", (0, 4), True, 0),
              Token("<patch_index_0044>", "location", None, True, 1), Token(",", "text", (4, 5), True, 2))
    maps = np.zeros((3, 16, 16), np.float32)
    maps[0, 0, 0] = maps[1, 15, 15] = maps[2, 3, 3] = 1.0
    return Result((200, 100), "brief", "<grounding>An image of", "red,", "...",
                  (Entity("red", (0, 3), ((10, 10, 50, 60),), ((0.05, 0.1, 0.25, 0.6),)),),
                  tokens, Heatmaps(maps, np.array([0.2, 0.4, 0.1], np.float32)) if heatmaps else None)


def test_every_front_end_gets_the_same_files_named_by_what_they_are(tmp_path):
    written = export(tmp_path, Image.new("RGB", (200, 100)), _result(), "my photo.jpg")
    names = [Path(p).name for p in written.files()]
    assert names == ["annotated-my_photo.png", "entities-my_photo.json", "heatmaps-my_photo.png",
                     "heatmaps-my_photo.npz"]  # distinct even where a phone shortens them to their start
    assert Image.open(written.annotated).size == (200, 100)  # full resolution
    saved = json.loads(written.entities.read_text())
    assert saved == record(_result(), "my photo.jpg") == {"image": "my photo.jpg", **_result().to_json()}
    assert np.load(written.heatmap_maps)["maps"].shape == (3, 16, 16)
    assert Image.open(written.heatmap_grid).size == overview(Image.new("RGB", (200, 100)), _result()).size


def test_token_images_are_named_by_position_and_token(tmp_path):
    written = export(tmp_path, Image.new("RGB", (200, 100)), _result(), "a.png", token_images=True)
    assert [p.name for p in written.token_heatmaps] == ["000-red.png", "001-loc_44.png", "002-token.png"]
    assert all(p.parent.name == "heatmaps-a" for p in written.token_heatmaps)
    assert written.to_json()["heatmaps"] == [str(p) for p in written.token_heatmaps]


def test_without_heatmaps_only_the_image_and_its_record(tmp_path):
    written = export(tmp_path, Image.new("RGB", (200, 100)), _result(heatmaps=False), "b.png", token_images=True)
    assert [Path(p).name for p in written.files()] == ["annotated-b.png", "entities-b.json"]
    assert set(written.to_json()) == {"annotated", "entities_file"}


def test_names_from_hostile_or_odd_file_names_stay_plain():
    assert safe_stem("../../x/<script>.png") == "script"
    assert safe_stem("\ud800\udcff.jpg") == "image" and safe_stem("") == "image"
    assert safe_stem("a" * 300 + ".png") == "a" * 80
    assert token_label(Token("<patch_index_0044>", "location", None, True, 0)) == "\u2039loc 44\u203a"


def test_a_file_name_that_is_not_valid_unicode_still_exports(tmp_path):
    written = export(tmp_path, Image.new("RGB", (200, 100)), _result(), "a\ud800b.png")
    assert [Path(p).name for p in written.files()[:2]] == ["annotated-a_b.png", "entities-a_b.json"]
    assert json.loads(written.entities.read_text(encoding="utf-8"))["image"] == "a\\ud800b.png"
    assert record(_result(), "b\udcff\udcfe.png")["image"] == "b\\xff\\xfe.png"

"""The CLI as a user runs it: a real subprocess (or main(argv) in-process), JSON Lines on stdout."""

import base64
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, timeout=300):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "kosmos_demo", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


def _main(capsys, *argv):
    """The CLI's main(argv) in this process: (exit code, stdout lines as dicts, stderr).

    A subprocess proves nothing more than this except the entry point itself, which
    test_folder_with_one_broken_image runs for real.
    """
    from kosmos_demo.cli import main

    try:
        code = main(list(argv))
    except SystemExit as stop:  # argparse
        code = stop.code
    captured = capsys.readouterr()
    captured.out.encode("utf-8")  # valid UTF-8: no lone surrogate reached stdout
    return code, [json.loads(line) for line in captured.out.splitlines()], captured.err


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("images")
    Image.new("RGB", (300, 200), "red").save(path / "a.png")
    Image.new("RGB", (64, 128), "blue").save(path / "b.jpg")
    Image.new("RGB", (90, 90), "green").save(path / "c.webp")
    (path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    return path


def test_folder_with_one_broken_image(tiny_checkpoint, folder, tmp_path):
    out = tmp_path / "out"
    done = run_cli("describe", str(folder), "--model", str(tiny_checkpoint), "--max-new-tokens", "6",
                   "--batch-size", "2", "--heatmaps", "--out", str(out))
    assert done.returncode == 1, done.stderr  # one image failed
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [Path(line["image"]).name for line in lines] == ["a.png", "b.jpg", "broken.png", "c.webp"]
    broken = lines[2]
    assert set(broken) == {"image", "error"} and "broken.png" in broken["error"]
    for line in (lines[0], lines[1], lines[3]):
        assert {"image", "width", "height", "task", "prompt", "text", "raw_text", "entities", "timings"} <= set(line)
        assert line["prompt"] == "<grounding>An image of"
        assert Path(line["annotated"]).is_file() and Path(line["heatmap_grid"]).is_file()
        assert len(line["heatmaps"]) == sum(t["generated"] for t in line["tokens"])
        for index, png in enumerate(line["heatmaps"]):  # the token is in the name
            assert Path(png).is_file() and Path(png).name.startswith(f"{index:03d}-") and len(Path(png).stem) > 4
            assert Path(png).parent.name == "heatmaps-" + Path(line["image"]).stem
        assert Path(line["entities_file"]).is_file() and Path(line["heatmap_maps"]).is_file()
    assert (lines[1]["width"], lines[1]["height"]) == (64, 128)
    assert "Traceback" not in done.stderr
    assert "images:" in done.stderr  # the progress bar, on stderr


def test_region_task_from_cli(tiny_checkpoint, folder, capsys):
    code, lines, err = _main(capsys, "describe", str(folder / "a.png"), "--model", str(tiny_checkpoint),
                             "--task", "region", "--box", "10,20,150,180", "--max-new-tokens", "4")
    assert code == 0, err
    (line,) = lines
    entity = line["entities"][0]
    assert entity["from_prompt"] and entity["boxes"] == [[10, 20, 150, 180]]
    assert entity["boxes_normalized"][0] == pytest.approx([10 / 300, 20 / 200, 0.5, 0.9], abs=1e-6)


@pytest.mark.parametrize(
    "flags,message",
    [(["--num-beams", "1000", "--strategy", "beam"], "num_beams"), (["--temperature", "nan"], "temperature"),
     (["--max-new-tokens", "lots"], "max_new_tokens"), (["--task", "phrase"], "needs text")],
)
def test_bad_settings_exit_2_with_message(tiny_checkpoint, folder, flags, message, capsys):
    code, lines, err = _main(capsys, "describe", str(folder / "a.png"), "--model", str(tiny_checkpoint), *flags)
    if message == "needs text":  # prompts are checked per image, so it is an error line
        assert code == 1 and message in lines[0]["error"]
    else:
        assert code == 2 and message in err
    assert "Traceback" not in err


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is not None, reason="bitsandbytes is installed")
def test_quantizing_without_bitsandbytes_is_a_clear_error(tiny_checkpoint, folder, capsys):
    code, lines, err = _main(capsys, "describe", str(folder / "a.png"), "--model", str(tiny_checkpoint),
                             "--quantize", "4bit")
    assert code == 1 and "4bit needs bitsandbytes" in err and lines == [] and "Traceback" not in err


def test_missing_model_is_a_clear_paragraph(folder, tmp_path, capsys):
    code, _, err = _main(capsys, "describe", str(folder / "a.png"), "--model", str(tmp_path / "no-such-checkpoint"))
    assert code == 1
    assert "Could not load Kosmos-2" in err and "--model" in err and "Traceback" not in err


def test_tiny_model_command_writes_a_loadable_checkpoint(tmp_path, capsys):
    from kosmos_demo.cli import main

    assert main(["tiny-model", str(tmp_path / "tiny")]) == 0, capsys.readouterr().err
    from transformers import AutoProcessor

    from kosmos_demo.compat import load_kosmos2

    model = load_kosmos2(tmp_path / "tiny", attn_implementation="sdpa")
    processor = AutoProcessor.from_pretrained(tmp_path / "tiny")
    assert len(processor.tokenizer) == model.config.text_config.vocab_size
    for token in ("<grounding>", "<phrase>", "</object>", "<patch_index_0000>", "<patch_index_1023>"):
        assert processor.tokenizer.convert_tokens_to_ids(token) != processor.tokenizer.unk_token_id


def test_lines_follow_the_order_images_were_given(tiny_checkpoint, folder, capsys):
    order = ["c.webp", "broken.png", "a.png", "b.jpg"]
    _, lines, _ = _main(capsys, "describe", *[str(folder / name) for name in order], "--model", str(tiny_checkpoint),
                        "--max-new-tokens", "2", "--batch-size", "2")
    assert [Path(line["image"]).name for line in lines] == order
    assert "error" in lines[1] and all("error" not in lines[i] for i in (0, 2, 3))


@pytest.mark.parametrize(
    "flags",
    [["--strategy", "x" * 100_000], ["--task", "x" * 100_000], ["--quantize", "x" * 100_000],
     ["--batch-size", "x" * 100_000], ["--batch-size", "-" + "9" * 4000], ["--top-k", "9" * 4000],
     ["--box", "1,2,x" + "9" * 100_000]],
    ids=["strategy", "task", "quantize", "batch-size text", "batch-size digits", "top-k", "box"],
)
def test_a_long_flag_value_is_quoted_short(capsys, flags):
    from kosmos_demo.cli import main

    try:
        code = main(["describe", "a.png", *flags])
    except SystemExit as stop:  # argparse
        code = stop.code
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if "error: " in line]
    assert code == 2 and len(line) < 600 and "x" * 100 not in line and "9" * 100 not in line, line


def test_a_file_name_that_is_not_utf8_is_written_escaped_with_its_bytes(tiny_checkpoint, tmp_path, capsys):
    folder = tmp_path / "odd"
    folder.mkdir()
    raw = os.path.join(os.fsencode(folder), b"b\xff\xfe.png")
    with open(raw, "wb") as fh:
        Image.new("RGB", (40, 30), "red").save(fh, "PNG")
    out = os.fsdecode(os.path.join(os.fsencode(tmp_path), b"out\xff"))  # --out itself not UTF-8 either
    code, lines, err = _main(capsys, "describe", str(folder), "--model", str(tiny_checkpoint), "--device", "cpu",
                             "--max-new-tokens", "2", "--out", out)
    assert code == 0, err
    (line,) = lines
    assert line["image"] == str(folder) + "/b\\xff\\xfe.png"
    assert base64.b64decode(line["image_bytes"]) == raw
    assert line["annotated"] == str(tmp_path) + "/out\\xff/annotated-b\\xff\\xfe.png"
    written = sorted(os.listdir(os.path.join(os.fsencode(tmp_path), b"out\xff")))
    assert written == [b"annotated-b\\xff\\xfe.png", b"entities-b\\xff\\xfe.json"]


def test_text_that_is_not_utf8_is_an_error_line(tiny_checkpoint, folder, capsys):
    code, lines, err = _main(capsys, "describe", str(folder / "a.png"), "--model", str(tiny_checkpoint),
                             "--device", "cpu", "--task", "vqa", "--text", "what \udcff is")
    assert code == 1 and "Traceback" not in err
    (line,) = lines
    assert "image_bytes" not in line and "not valid Unicode (at position 5)" in line["error"]


@pytest.fixture
def no_model(monkeypatch):
    """get_engine replaced by a stand-in that fails if a batch runs: these cases never need the model."""
    from kosmos_demo import engine
    from kosmos_demo.images import ImageLimits

    loads = []
    monkeypatch.setattr(engine, "get_engine", lambda *a, **k: loads.append(a) or SimpleNamespace(
        image_limits=ImageLimits(), describe_batch=None))
    return loads


@pytest.mark.parametrize("where", ["a file", "under a file", "read-only"])
def test_an_unusable_out_is_refused_before_the_model_loads(tmp_path, capsys, no_model, where):
    (tmp_path / "f").write_text("keep")
    out = {"a file": tmp_path / "f", "under a file": tmp_path / "f" / "sub", "read-only": tmp_path / "ro"}[where]
    if where == "read-only":
        if os.geteuid() == 0:
            pytest.skip("root may write into a read-only folder; 'under a file' covers the refusal path")
        out.mkdir(mode=0o500)
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    code, lines, err = _main(capsys, "describe", str(tmp_path / "a.png"), "--out", str(out))
    (line,) = err.splitlines()
    assert code == 2 and not lines and not no_model, err
    assert line.startswith("error: --out: cannot write the PNGs to ") and str(out) in line
    assert (tmp_path / "f").read_text() == "keep"


def test_a_usable_out_is_created_and_left_clean(tmp_path, capsys, no_model):
    out = tmp_path / "new" / "out"
    code, _, err = _main(capsys, "describe", str(tmp_path / "missing.png"), "--out", str(out))
    assert code == 1 and out.is_dir() and not list(out.iterdir()), err  # no probe file left behind


def test_fifos_broken_links_and_empty_folders_get_error_lines(tmp_path, capsys, no_model):
    folder, empty = tmp_path / "in", tmp_path / "empty"
    folder.mkdir(), empty.mkdir(), (folder / "sub").mkdir()
    os.mkfifo(folder / "pipe.png")
    (folder / "gone.png").symlink_to(folder / "deleted.png")
    (folder / ".hidden.png").write_bytes(b"")
    code, lines, err = _main(capsys, "describe", str(folder), str(empty))
    assert code == 1, err
    assert [Path(line["image"]).name for line in lines] == ["gone.png", "pipe.png", "empty"]
    gone, pipe, nothing = (line["error"] for line in lines)
    assert "link to a file that does not exist" in gone and "not a regular file" in pipe
    assert "holds no files" in nothing
    assert "note: not read: 2 subfolder(s) or hidden entries" in err and "'sub'" in err

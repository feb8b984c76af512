"""The CLI as a user runs it: a real subprocess, JSON Lines on stdout."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, timeout=300):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "kosmos_demo", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


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
    assert (lines[1]["width"], lines[1]["height"]) == (64, 128)
    assert "Traceback" not in done.stderr
    assert "images:" in done.stderr  # the progress bar, on stderr


def test_region_task_from_cli(tiny_checkpoint, folder):
    done = run_cli("describe", str(folder / "a.png"), "--model", str(tiny_checkpoint), "--task", "region",
                   "--box", "10,20,150,180", "--max-new-tokens", "4")
    assert done.returncode == 0, done.stderr
    (line,) = [json.loads(x) for x in done.stdout.splitlines()]
    entity = line["entities"][0]
    assert entity["from_prompt"] and entity["boxes"] == [[10, 20, 150, 180]]
    assert entity["boxes_normalized"][0] == pytest.approx([10 / 300, 20 / 200, 0.5, 0.9], abs=1e-6)


@pytest.mark.parametrize(
    "flags,message",
    [(["--num-beams", "1000", "--strategy", "beam"], "num_beams"), (["--temperature", "nan"], "temperature"),
     (["--max-new-tokens", "lots"], "max_new_tokens"), (["--task", "phrase"], "needs text")],
)
def test_bad_settings_exit_2_with_message(tiny_checkpoint, folder, flags, message):
    done = run_cli("describe", str(folder / "a.png"), "--model", str(tiny_checkpoint), *flags)
    if message == "needs text":  # prompts are checked per image, so it is an error line
        assert done.returncode == 1 and message in json.loads(done.stdout)["error"]
    else:
        assert done.returncode == 2 and message in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is not None, reason="bitsandbytes is installed")
def test_quantizing_without_bitsandbytes_is_a_clear_error(tiny_checkpoint, folder):
    done = run_cli("describe", str(folder / "a.png"), "--model", str(tiny_checkpoint), "--quantize", "4bit")
    assert done.returncode == 1 and "4bit needs bitsandbytes" in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_missing_model_is_a_clear_paragraph(folder, tmp_path):
    done = run_cli("describe", str(folder / "a.png"), "--model", str(tmp_path / "no-such-checkpoint"))
    assert done.returncode == 1
    assert "Could not load Kosmos-2" in done.stderr and "--model" in done.stderr
    assert "Traceback" not in done.stderr


def test_tiny_model_command_writes_a_loadable_checkpoint(tmp_path):
    done = run_cli("tiny-model", str(tmp_path / "tiny"))
    assert done.returncode == 0, done.stderr
    from transformers import AutoProcessor, Kosmos2ForConditionalGeneration

    model = Kosmos2ForConditionalGeneration.from_pretrained(tmp_path / "tiny")
    processor = AutoProcessor.from_pretrained(tmp_path / "tiny")
    assert len(processor.tokenizer) == model.config.text_config.vocab_size
    for token in ("<grounding>", "<phrase>", "</object>", "<patch_index_0000>", "<patch_index_1023>"):
        assert processor.tokenizer.convert_tokens_to_ids(token) != processor.tokenizer.unk_token_id


def test_lines_follow_the_order_images_were_given(tiny_checkpoint, folder):
    order = ["c.webp", "broken.png", "a.png", "b.jpg"]
    done = run_cli("describe", *[str(folder / name) for name in order], "--model", str(tiny_checkpoint),
                   "--max-new-tokens", "2", "--batch-size", "2")
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [Path(line["image"]).name for line in lines] == order
    assert "error" in lines[1] and all("error" not in lines[i] for i in (0, 2, 3))

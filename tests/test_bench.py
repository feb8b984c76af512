"""Smoke test of ``python -m bench``'s plumbing on the tiny size. Nothing here asserts a timing."""

import importlib.util
import json

import pytest
import torch

from bench.loading import measure_in_child
from bench.run import main, parse_skip
from bench.timing import Sample, Series, TokenClock, timed

HAND_WRITTEN = (
    "# Benchmarks\n\nNotes a person wrote.\n\n"
    "<!-- bench:full:begin -->\nthe full-size table\n<!-- bench:full:end -->\n"
)


def _args(out, checkpoint, *extra):
    return ["--size", "tiny", "--tokens", "3", "--runs", "1", "--warmup", "0", "--batch", "2",
            "--leak-runs", "3", "--page-tokens", "3,5", "--skip", "load", "--checkpoint", str(checkpoint), "--out", str(out),
            "--json", str(out.with_suffix(".json")), *extra]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    out, checkpoint = folder / "BENCHMARKS.md", folder / "checkpoint"
    out.write_text(HAND_WRITTEN)
    code = main(_args(out, checkpoint))
    return code, out, checkpoint


def test_every_part_reports_into_its_own_section(tiny_run):
    code, out, _ = tiny_run
    text = out.read_text()
    assert code == 0
    assert text.startswith(HAND_WRITTEN.split("<!--")[0])  # the hand-written part survives
    assert "the full-size table" in text  # and so does another size's section
    section = text.split("<!-- bench:tiny:begin -->")[1].split("<!-- bench:tiny:end -->")[0]
    assert "`python -m bench --size tiny --tokens 3" in section
    for needle in ("| a |", "| b |", "| c |", "Batch (d)", "App (e)", "Page (f)", "| 5 |", "Heatmap memory", "Heatmap recording cost",
                   "Leak check", "Peak RSS", "torch 2", "transformers", "gradio", "Machine load", "| b/a <= 1.05 |"):
        assert needle in section, needle


def test_the_json_summary_holds_each_target_and_verdict(tiny_run):
    _, out, _ = tiny_run
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["command"].startswith("python -m bench --size tiny --tokens 3")
    assert set(summary["targets"]) == {"b/a", "c/a", "batch gain", "app added", "page/describe"}
    assert summary["targets"]["b/a"]["target"] == "<= 1.05"
    assert all(t["met"] in (True, False) for t in summary["targets"].values())  # every part ran
    assert [p["tokens"] for p in summary["page"]] == [3, 5] and all(p["ratio"] > 0 for p in summary["page"])
    assert summary["seconds"].keys() >= {"a", "b", "c"}


def test_without_out_no_report_is_changed_and_the_section_is_printed(tiny_run, tmp_path, monkeypatch, capsys):
    _, out, checkpoint = tiny_run
    before = out.read_text()
    monkeypatch.chdir(tmp_path)
    args = _args(out, checkpoint, "--skip", "a,b,c,d,e,f,leak")
    args = args[:args.index("--out")] + args[args.index("--json"):]
    args[args.index("--json") + 1] = str(tmp_path / "summary.json")
    assert main(args) == 0
    assert out.read_text() == before and not (tmp_path / "BENCHMARKS.md").exists()
    assert "Heatmap memory" in capsys.readouterr().out
    assert json.loads((tmp_path / "summary.json").read_text())["size"] == "tiny"


def test_a_second_run_replaces_its_section(tiny_run):
    _, out, checkpoint = tiny_run
    assert main(_args(out, checkpoint, "--skip", "a,b,c,d,e,f,leak")) == 0
    text = out.read_text()
    assert text.count("<!-- bench:tiny:begin -->") == 1
    assert text.count("<!-- bench:full:begin -->") == 1


def test_loads_run_in_fresh_processes_straight_to_the_target_dtype(tiny_run):
    _, _, checkpoint = tiny_run
    for kind in ("bare", "engine"):
        sample = measure_in_child(kind, checkpoint, "cpu", "bfloat16")
        assert sample.kind == kind and sample.weights_on_target and sample.dtype == "bfloat16"
        assert sample.seconds > 0 and sample.peak_rss_bytes > 0


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is not None, reason="bitsandbytes is installed")
def test_quantizing_without_bitsandbytes_exits_with_code_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--size", "tiny", "--quantize", "4bit", "--out", str(tmp_path / "B.md")])
    assert exit_info.value.code == 2
    assert "bitsandbytes" in capsys.readouterr().err
    assert not (tmp_path / "B.md").exists()


def test_unknown_parts_to_skip_are_refused():
    assert parse_skip(["e", "load,leak"]) == {"e", "load", "leak"}
    with pytest.raises(SystemExit) as exit_info:
        parse_skip(["g"])
    assert exit_info.value.code == 2


def test_page_tokens_that_are_not_whole_numbers_are_refused(tmp_path, capsys):
    for value in ("", "32,x", "0,256"):
        assert main(["--size", "tiny", "--page-tokens", value, "--out", str(tmp_path / "B.md")]) == 2
        assert "--page-tokens" in capsys.readouterr().err
    assert not (tmp_path / "B.md").exists()


def test_the_token_clock_speaks_streamer_and_logits_processor():
    cpu = torch.device("cpu")

    def as_streamer(clock):
        clock.put(torch.tensor([[1, 2, 3]]))  # generate hands over the prompt first
        for token in range(4):
            clock.put(torch.tensor([token]))
        clock.end()

    def as_processor(clock):
        for _ in range(4):
            clock(None, None)

    for work in (as_streamer, as_processor):
        sample = timed(work, cpu)
        assert sample.steps == 4 and sample.first_token is not None and sample.decode_rate is not None
    assert TokenClock(cpu)(None, "scores") == "scores"
    series = Series("x", [Sample(3.0), Sample(1.0), Sample(2.0)])
    assert series.seconds == 2.0 and series.spread == (1.0, 3.0)

"""The README's promises that a machine can check."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _commands_after(heading: str) -> list[str]:
    section = README.split(heading, 1)[1]
    return re.findall(r"```bash\n(.+?)\n```", section, flags=re.S)[0].splitlines()


def test_ci_runs_exactly_the_readme_test_command():
    (command,) = _commands_after("## Test it")
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert command in ci


def test_run_command_starts_the_app():
    (command,) = _commands_after("## Run it")
    assert command.endswith("python app.py")


def test_spaces_front_matter():
    front = README.split("---", 2)[1]
    for line in ("sdk: gradio", "app_file: app.py", "- microsoft/kosmos-2-patch14-224", "preload_from_hub:",
                 "suggested_hardware:", "license: mit"):
        assert line in front
    version = re.search(r"sdk_version: (\d+)\.(\d+)\.(\d+)", front).groups()
    assert (6, 16, 0) <= tuple(int(v) for v in version) < (7, 0, 0)  # within requirements.txt's range


def test_pinned_security_floor_for_gradio():
    requirements = (ROOT / "requirements.txt").read_text()
    assert re.search(r"^gradio>=6\.16\.0", requirements, flags=re.M)


def test_both_spellings_of_the_grounding_prompt_give_the_same_ids():
    """README: the model card's task list puts a space after <grounding>, its quick start does not."""
    from transformers import AutoProcessor

    from kosmos_demo.checkpoints import SHORTCUTS
    from kosmos_demo.tiny import build_processor

    for tokenizer in (build_processor().tokenizer, AutoProcessor.from_pretrained(SHORTCUTS["toy"]).tokenizer):
        for text in ("An image of", "Describe this image in detail:", "Question: What is it? Answer:"):
            assert tokenizer(f"<grounding>{text}").input_ids == tokenizer(f"<grounding> {text}").input_ids


def test_every_repository_path_the_readme_names_exists():
    for path in re.findall(r"`((?:kosmos_demo|docs|bench|tests|tools)/[\w./-]+)`", README) + re.findall(
            r"\]\(((?:docs|kosmos_demo)/[\w./-]+)\)", README):
        assert (ROOT / path).exists(), path


def _env():
    import os

    return {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONPATH": str(ROOT)}


def test_the_python_snippet_runs_from_any_folder(tmp_path):
    import subprocess
    import sys

    snippet = re.findall(r"## Python\n\n```python\n(.+?)\n```", README, flags=re.S)[0]
    done = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, env=_env())
    assert done.returncode == 0, done.stderr[-2000:]
    assert "red circle" in done.stdout and (tmp_path / "annotated.png").is_file()


def test_the_offline_cli_examples_run_as_written(tmp_path):
    import json
    import subprocess
    import sys

    (tmp_path / "kosmos_demo").symlink_to(ROOT / "kosmos_demo")  # the examples' paths, from the checkout's root
    examples = [line for line in _commands_after("## CLI") if "--model toy" in line and "describe" in line]
    assert len(examples) >= 4
    for line in examples:
        args = line.split("#")[0].split()
        assert args[:3] == ["python", "-m", "kosmos_demo"]
        args = [arg.strip('"') for arg in args]
        text_at = args.index("--text") if "--text" in args else None
        if text_at is not None:  # the quoted phrase is one argument
            end = next(i for i in range(text_at + 1, len(args)) if args[i].startswith("--"))
            args[text_at + 1:end] = [" ".join(args[text_at + 1:end])]
        done = subprocess.run([sys.executable, *args[1:], "--max-new-tokens", "12"], capture_output=True,
                              text=True, timeout=300, cwd=tmp_path, env=_env())
        assert done.returncode == 0, (line, done.stderr[-1500:])
        records = [json.loads(out) for out in done.stdout.splitlines()]
        assert records and all(r["text"] for r in records), line

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

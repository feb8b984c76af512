"""The package installs like a library: declared dependencies, the console script, the shipped files."""

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def _requirements(lines) -> dict[str, Requirement]:
    found = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            requirement = Requirement(line)
            found[requirement.name.lower()] = requirement
    return found


def test_pyproject_declares_exactly_the_pins_of_requirements_txt():
    declared = _requirements(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
    spaces = _requirements((ROOT / "requirements.txt").read_text().splitlines())
    assert {name: str(r) for name, r in declared.items()} == {name: str(r) for name, r in spaces.items()}


def test_load_errors_name_the_transformers_range_requirements_txt_admits():
    from kosmos_demo.compat import TESTED_TRANSFORMERS

    spaces = _requirements((ROOT / "requirements.txt").read_text().splitlines())
    assert spaces["transformers"].specifier == Requirement("transformers" + TESTED_TRANSFORMERS).specifier


def _venv(tmp_path: Path) -> Path:
    """A venv that sees the installed dependencies, so only the project itself is installed into it."""
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(tmp_path / "venv")], check=True)
    return tmp_path / "venv" / "bin"


def _source_copy(tmp_path: Path) -> Path:
    """The checkout's files as a clean clone has them (no build leftovers written into the checkout)."""
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    copy = tmp_path / "src"
    for name in filter(None, tracked.decode().split("\0")):
        if (ROOT / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, copy / name)
    return copy


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs the git checkout")
@pytest.mark.parametrize("editable", [False, True], ids=["install", "editable"])
def test_pip_install_gives_the_package_and_a_console_script_that_work_from_any_folder(tmp_path, editable):
    source, bin_dir = _source_copy(tmp_path), _venv(tmp_path)
    target = ["-e", str(source)] if editable else [str(source)]
    subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "-q", "--no-deps",
                    *target], check=True, capture_output=True, cwd=tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    env.pop("PYTHONPATH", None)

    where = subprocess.run([str(bin_dir / "python"), "-c", "import kosmos_demo, kosmos_demo.checkpoints as c; "
                            "print(kosmos_demo.__file__); print(sorted(p.name for p in c.ASSETS.iterdir()))"],
                           capture_output=True, text=True, check=True, cwd=elsewhere, env=env).stdout
    home = source if editable else tmp_path / "venv"
    assert where.splitlines()[0].startswith(str(home)) and "toy-model" in where

    script = bin_dir / "kosmos-demo"
    help_text = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=True,
                               cwd=elsewhere, env=env).stdout
    assert "kosmos-demo" in help_text and all(c in help_text for c in ("serve", "describe", "tiny-model"))
    serve_help = subprocess.run([str(script), "serve", "--help"], capture_output=True, text=True, check=True,
                                cwd=elsewhere, env=env).stdout
    assert "kosmos-demo serve" in serve_help and "--mcp" in serve_help and "--port" in serve_help

    image = source / "kosmos_demo" / "assets" / "toy-examples" / "red-circle.png"
    shutil.copy(image, elsewhere / "shape.png")
    described = subprocess.run([str(script), "describe", "shape.png", "--model", "toy", "--device", "cpu",
                                "--max-new-tokens", "12"], capture_output=True, text=True, cwd=elsewhere, env=env)
    assert described.returncode == 0, described.stderr[-2000:]
    record = json.loads(described.stdout)
    assert "red circle" in record["text"] and record["entities"][0]["boxes"]  # the shipped toy weights were found

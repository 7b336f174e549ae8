"""The repository's layout: every Python file is linted, and the arrows between packages point one way."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tracked_python_files() -> set[str]:
    try:
        out = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return {line for line in out.splitlines() if line}


def test_ruff_lints_every_python_file_including_the_distributed_package():
    listed = subprocess.run([sys.executable, "-m", "ruff", "check", ".", "--show-files"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout
    linted = {str(Path(line.strip()).resolve().relative_to(ROOT)) for line in listed.splitlines() if line.strip()}
    assert any(p.startswith("dmdl_dist/distributed/") for p in linted)
    assert _tracked_python_files() <= linted, sorted(_tracked_python_files() - linted)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_engine_imports_neither_report_nor_serve():
    for path in sorted((ROOT / "dmdl_dist" / "engine").glob("*.py")):
        bad = {m for m in _imports(path) if m.startswith(("dmdl_dist.report", "dmdl_dist.serve"))}
        assert not bad, f"{path.name} imports {bad}"


def test_only_the_distributed_package_imports_torch_distributed_or_ray():
    for path in sorted((ROOT / "dmdl_dist").rglob("*.py")):
        rel = path.relative_to(ROOT / "dmdl_dist").as_posix()
        if rel.startswith(("distributed/", "tuning/", "commands/")):
            continue
        bad = {m for m in _imports(path) if m == "ray" or m.startswith(("ray.", "torch.distributed"))}
        assert not bad, f"{rel} imports {bad}"

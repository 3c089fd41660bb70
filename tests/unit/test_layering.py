"""The contract between training and serving is its own TensorFlow-free package; trainer and
serving depend on it and never on each other (DESIGN section 2)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def imported_packages(package: str) -> dict[str, set[str]]:
    """{module file: top-level packages it imports (absolute imports)}."""
    found = {}
    for path in sorted((REPO / package).rglob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(REPO))] = names
    return found


@pytest.mark.parametrize("package, forbidden", [
    ("trainer", {"serving"}),
    ("serving", {"trainer"}),
    ("contract", {"commandline", "trainer", "serving", "tensorflow", "keras"}),
    ("commandline", {"trainer", "serving", "tensorflow", "keras"}),
])
def test_who_imports_whom(package, forbidden):
    for module, names in imported_packages(package).items():
        assert not names & forbidden, (module, names & forbidden)


def test_the_contract_loads_without_tensorflow():
    code = ("import sys, contract.storage, contract.manifest, contract.errors, "
            "contract.names, contract.image_formats; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('tensorflow', 'keras', 'trainer', 'serving')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_the_puller_image_ships_without_the_trainer():
    dockerfile = (REPO / "serving" / "puller.Dockerfile").read_text()
    copies = [line.split()[1] for line in dockerfile.splitlines() if line.startswith("COPY")]
    assert "contract/" in copies and "serving/" in copies
    assert "trainer/" not in copies

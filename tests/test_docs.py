"""The repository stands alone: docs and docstrings point to files inside it (docs/), never to a
design file kept elsewhere, and the conventions page covers what they point to."""

import os
import re
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tracked_text_files():
    try:
        out = subprocess.run(
            ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        out = subprocess.CompletedProcess([], 1)
    if out.returncode != 0:  # not a git checkout: walk the folders instead
        names = [os.path.relpath(os.path.join(r, f), ROOT) for r, _, fs in os.walk(ROOT)
                 for f in fs if ".git" not in r]  # fmt: skip
    else:
        names = out.stdout.split()
    return [n for n in names if n.endswith((".py", ".md", ".yaml", ".cpp", ".cu", ".h"))
            and n != "tests/test_docs.py"]  # fmt: skip


def test_no_reference_to_a_design_file_outside_the_repo():
    offenders = []
    for name in _tracked_text_files():
        with open(os.path.join(ROOT, name), errors="replace") as f:
            if "DESIGN.md" in f.read():
                offenders.append(name)
    assert not offenders, f"point to docs/conventions.md instead: {offenders}"


def test_docs_references_exist():
    missing = []
    for name in _tracked_text_files():
        with open(os.path.join(ROOT, name), errors="replace") as f:
            for ref in re.findall(r"docs/([A-Za-z0-9_]+\.md)", f.read()):
                if not os.path.isfile(os.path.join(ROOT, "docs", ref)):
                    missing.append((name, ref))
    assert not missing


def test_conventions_page_has_every_section():
    with open(os.path.join(ROOT, "docs", "conventions.md")) as f:
        text = f.read()
    for section in ("Layout", "Axes", "Boxes", "Dataset records", "Model input and output",
                    "Errors"):  # fmt: skip
        assert f"## {section}" in text, section

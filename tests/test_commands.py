"""The commands the README and docs tell a user to type name files and modules that exist, and
the entry points of the folders (synth/, benchmarks/ through bench.py) run as written there.

A file moved into a folder breaks `python OLD.py ...` in every document that shows it; this
test reads the documents, so such a command fails here instead of on a user's machine.
docs/benchmark-log.md is left out: it records the commands of its day.
"""
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md")),
        *sorted(ROOT.glob("*.py")), *sorted(ROOT.glob("*/*.py")), ROOT / "bench_gpu.sh"]
DOCS = [p for p in DOCS if p.name != "benchmark-log.md" and "tests" not in p.parts]
SCRIPT = re.compile(r"python3? ((?:[\w.-]+/)*[\w.-]+\.py)\b")
MODULE = re.compile(r"python3? -m ([\w.]+)")


def test_documented_commands_name_existing_files_and_modules():
    scripts, modules = set(), set()
    for doc in DOCS:
        text = doc.read_text()
        scripts |= {(m.group(1), doc.name) for m in SCRIPT.finditer(text)}
        modules |= {(m.group(1), doc.name) for m in MODULE.finditer(text)}
    assert scripts and modules
    missing = sorted((s, where) for s, where in scripts if not (ROOT / s).is_file())
    assert not missing, f"documented scripts that do not exist: {missing}"
    sys.path.insert(0, str(ROOT))
    try:
        unknown = sorted((m, where) for m, where in modules if importlib.util.find_spec(m) is None)
    finally:
        sys.path.remove(str(ROOT))
    assert not unknown, f"documented modules that cannot be found: {unknown}"


def run(*args: str) -> str:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout


def test_synth_entry_points_run_as_documented(tmp_path):
    """`python -m synth.demo OUT --n N --seed S` and `python -m synth.kinds OUT --kind K ...`
    (README, docs/data.md) write their corpora."""
    demo = json.loads(run("-m", "synth.demo", str(tmp_path / "demo"), "--n", "4", "--seed", "0").splitlines()[-1])
    assert demo["samples"] == 4 and (tmp_path / "demo" / "iSign_v1.1.csv").is_file()
    kinds = json.loads(run("-m", "synth.kinds", str(tmp_path / "kinds"), "--kind", "path", "--n", "4",
                           "--seed", "0").splitlines()[-1])
    assert kinds["samples"] == 4 and (tmp_path / "kinds" / "train.csv").is_file()


def test_bench_names_every_benchmark():
    """bench.py stays the benchmarks' entry point: each `python bench.py WHAT` of the docs is one of its choices."""
    usage = subprocess.run([sys.executable, "bench.py"], cwd=ROOT, capture_output=True, text=True).stderr
    choices = set(re.search(r"\{([\w,]+)\}", usage).group(1).split(","))
    documented = set()
    for doc in DOCS:
        documented |= set(re.findall(r"python3? bench\.py (\w+)", doc.read_text()))
    assert documented and documented <= choices, documented - choices

"""The README's quoted numbers and figures come from docs/ (issue 11): every generated
block equals the docs/ file that scripts/make_docs.py wrote, and what the blocks quote is
what docs/numbers.json measured. Reads files only; reruns no campaign."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import make_docs  # noqa: E402

README = (ROOT / "README.md").read_text()


def test_every_readme_block_is_its_docs_file() -> None:
    names = [m.group("name") for m in make_docs.BLOCK.finditer(README)]
    assert names == ["main_job", "bits", "variants", "perf_campaign", "perf_pytorchfi",
                     "perf_overhead", "perf_store", "perf_backends", "reproduce_paper"]
    assert make_docs.stale_blocks(README) == []
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_docs.py"), "--check"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_a_changed_number_is_caught(tmp_path: Path) -> None:
    stale = README.replace("mean accuracy    0.7516", "mean accuracy    0.7517", 1)
    assert stale != README and make_docs.stale_blocks(stale) == ["main_job"]


def test_the_figures_the_readme_shows_exist() -> None:
    for path in re.findall(r"!\[[^\]]*\]\((docs/[^)]+)\)", README):
        assert (ROOT / path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path


def test_the_blocks_quote_the_measured_numbers() -> None:
    n = json.loads((ROOT / "docs" / "numbers.json").read_text())
    main = (ROOT / "docs" / "main_job.md").read_text()
    assert f"mean accuracy    {n['main_job']['mean_accuracy']:.4f}" in main
    assert f"golden accuracy  {n['main_job']['golden_accuracy']:.4f}" in main
    assert f"about {n['main_job']['seconds']:.0f} s" in main
    bits = (ROOT / "docs" / "bits.md").read_text()
    b30 = n["bits"]["30"]
    assert f"costs {100 * b30['drop']:.1f} points" in bits
    assert f"accuracy {b30['mean']:.3f} [{b30['low']:.3f}, {b30['high']:.3f}]" in bits
    assert f"# drop {b30['drop']:.4f}" in bits
    variants = (ROOT / "docs" / "variants.md").read_text()
    for label, v in n["variants"].items():
        name = "SNN" if label == "snn" else label
        assert f"{name} {v['mean']:.3f}" in variants
        assert f"{name} {v['per_rate']['0.01']:.3f}" in variants


def test_the_benchmark_blocks_are_rendered_from_the_benchmark_json() -> None:
    for name, text in make_docs.render_perf().items():
        assert (ROOT / "docs" / f"{name}.md").read_text() == text, name
    perf = (ROOT / "docs" / "perf_campaign.md").read_text()
    d = json.loads((ROOT / "docs" / "bench_campaign.json").read_text())
    cell = next(c for c in d["cells"] if c["target"] == "weights" and c["k"] == 1)
    assert f"| weights | {cell['per_trial_s'] * 1e3:.3g} ({cell['ratio']:.2f}) |" in perf

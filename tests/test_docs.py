"""The design notes live in the repository (docs/design.md) and cover what the code names."""

import pathlib
import re

from tfqat.calibration.calibrators import METHODS
from tfqat.nn.quantizers import FIXED_RANGES

ROOT = pathlib.Path(__file__).resolve().parent.parent
DESIGN = ROOT / "docs" / "design.md"


def _cited_files():
    """README, BENCHMARKS, docs and every source of the package, bench and examples."""
    files = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]
    for folder in ("tfqat", "bench", "examples"):
        files += sorted((ROOT / folder).rglob("*.py"))
    return files


def test_design_notes_are_cited_inside_the_repository():
    # Any mention of a DESIGN.md other than docs/design.md points outside the repository.
    outside = re.compile(r"(?<!docs/)\bdesign\.md|\.\./shared/DESIGN", re.IGNORECASE)
    offenders = [f"{path.relative_to(ROOT)}:{number}" for path in _cited_files()
                 for number, line in enumerate(path.read_text().splitlines(), 1)
                 if outside.search(line)]
    assert not offenders, f"cite docs/design.md instead: {offenders}"
    assert "docs/design.md" in (ROOT / "README.md").read_text()


def test_design_notes_cover_the_folding_policies_and_methods():
    text = DESIGN.read_text()
    names = ["correction_scale", "correction_recip", "correction_offset", "bn_freeze_delay",
             "quant_delay", "narrow range", "per_channel", "FULLY_CONNECTED",
             "TFLiteConverter.from_keras_model", *METHODS, *FIXED_RANGES]
    missing = [name for name in names if name not in text]
    assert not missing, f"docs/design.md does not mention {missing}"
    # One table row per int8 scale policy: the rules' OutputQuant kinds, and concatenation.
    for policy in ("tracked", "fixed", "tied to input", "shared by concatenation", "none"):
        assert f"| {policy}" in text, policy

"""docs/layers.md: one row per Keras layer class, none failing, and rows that the code
still measures the same way (bench/layer_coverage.py)."""

import pathlib
import sys

import keras
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import layer_coverage  # noqa: E402
import layer_probes  # noqa: E402


def _rows():
    rows = {}
    for line in (ROOT / "docs" / "layers.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 4 and cells[0] not in ("layer", "---"):
            rows[cells[0].split(" (")[0]] = cells
    return rows


def test_every_keras_layer_class_has_a_row_and_none_fails():
    rows = _rows()
    missing = sorted(set(layer_probes.aliases(keras)) - set(rows))
    assert not missing, f"regenerate docs/layers.md (bench/layer_coverage.py): {missing}"
    failed = [name for name, cells in rows.items() if cells[1] == "failed"]
    assert not failed, failed
    statuses = {cells[1] for cells in rows.values()}
    assert statuses <= {"quantized", "pass-through", "dropped at export", "refused",
                        "not probed"}, statuses


@pytest.mark.slow
@pytest.mark.parametrize("name", ["LayerNormalization", "MultiHeadAttention", "Embedding",
                                  "RandomFlip", "MaxPooling2D", "LSTM", "Bidirectional"])
def test_rows_match_what_the_code_does_now(name):
    assert layer_coverage.measure(name)["status"] == _rows()[name][1]

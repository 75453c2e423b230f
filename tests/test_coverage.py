"""Architecture coverage: every Keras Applications family, and its row in docs/coverage.md.

Each case runs bench/coverage.py's `measure` (quantize_model, two training
steps, calibration, export_tflite, fidelity) and checks the result and the
table row. Random-weight nets amplify last-bit rounding differences (see
tfqat/diagnostics/fidelity.py), so the exactness of the simulation is checked op by op;
the end-to-end figures only have to show a working classifier.
About 20 s (MobileNet) to several minutes (InceptionResNetV2, ConvNeXtTiny) per model on 2
CPU cores.
"""

import importlib.util
import math
import pathlib
import sys

import numpy as np
import pytest

import tfqat

ROOT = pathlib.Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("bench_coverage", ROOT / "bench" / "coverage.py")
coverage = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = coverage  # dataclasses look their module up
_spec.loader.exec_module(coverage)

TABLE = coverage.parse_table(coverage.DOC.read_text()) if coverage.DOC.exists() else {}


# Families with no BatchNormalization, so no fused conv-BN layer: VGG, and ConvNeXt (which
# normalizes with LayerNormalization).
WITHOUT_BATCHNORM = {"VGG16", "VGG19", "ConvNeXtTiny"}


def test_the_table_has_a_green_row_for_every_model():
    assert sorted(TABLE) == sorted(spec.name for spec in coverage.SPECS), (
        "regenerate docs/coverage.md with: python bench/coverage.py")
    for name, row in TABLE.items():
        assert row["integer-only"] == "yes", name
        assert row["op-by-op max diff (LSB)"].startswith("1 ("), name


def made_up_row(model="MobileNet", params=1234):
    return coverage.CoverageRow(
        model=model, input_shape=(32, 32, 3), params=params, fused_conv_bn=3,
        activation_fake_quants=7, weight_fake_quants=4, integer_only=True, int8_io=True,
        tflite_bytes=4096, agreement=0.5, mean_diff_lsb=1.234, max_diff_lsb=9.0,
        op_max_diff_lsb=1.0, ops_compared=6, ops_total=6, train_loss=2.3,
        quantize_s=1.0, train_s=2.0, export_s=3.0)


def test_table_rendering_round_trips():
    cells = coverage.parse_table(coverage.render([made_up_row()]))["MobileNet"]
    assert cells["params"] == "1,234" and cells["fake quants (act / weight)"] == "7 / 4"
    assert cells["integer-only"] == "yes" and cells["op-by-op max diff (LSB)"] == "1 (6 of 6)"


def test_update_replaces_measured_rows_keeps_the_others_in_specs_order(tmp_path):
    order = [spec.name for spec in coverage.SPECS]
    first, middle, last = order[0], order[len(order) // 2], order[-1]
    old = coverage.render([made_up_row(first, 1), made_up_row(last, 3)])
    table = coverage.parse_table(old)
    merged = coverage.merge_rows(table, [made_up_row(last, 30), made_up_row(middle, 20)])
    text = coverage.render(merged)
    rows = coverage.parse_table(text)
    assert list(rows) == [first, middle, last]
    assert [rows[m]["params"] for m in (first, middle, last)] == ["1", "20", "30"]
    assert text.splitlines()[:8] == old.splitlines()[:8]  # the same header and columns
    # The kept row is the table's line, cell for cell.
    assert rows[first] == table[first]
    # A full render with no table keeps SPECS order too, whatever the measuring order.
    assert list(coverage.parse_table(coverage.render(coverage.merge_rows(
        {}, [made_up_row(last), made_up_row(first)])))) == [first, last]


# One model per family: the deeper variants (ResNet101/152, ResNet101V2, DenseNet169/201,
# VGG19) have the same layer kinds as their family's model here, and would add about half an
# hour to CI; bench/coverage.py measures them for the table, which the tests above check.
CHECKED_IN_CI = [spec for spec in coverage.SPECS if spec.variant_of is None]


def test_each_variant_left_out_of_ci_has_its_family_checked():
    names = {spec.name for spec in CHECKED_IN_CI}
    for spec in coverage.SPECS:
        assert spec.variant_of is None or spec.variant_of in names, spec.name


@pytest.mark.slow
@pytest.mark.parametrize("name", [spec.name for spec in CHECKED_IN_CI])
def test_model_quantizes_trains_and_exports_integer_only(name):
    row, qat, flatbuffer = coverage.measure(name)
    report = tfqat.inspect_tflite(flatbuffer)
    assert row.integer_only and row.int8_io and not report.float_ops, str(report)
    assert math.isfinite(row.train_loss)
    assert row.weight_fake_quants > 0 and row.weight_fake_quants >= row.fused_conv_bn
    assert (row.fused_conv_bn > 0) == (name not in WITHOUT_BATCHNORM)
    # Every quantizer found in the .tflite computes what the QAT model computes, within 1 LSB.
    assert row.op_max_diff_lsb <= 1.0 + 1e-3
    assert row.ops_compared >= 0.6 * row.ops_total
    # End to end: a classifier whose outputs stay close (no broken op); see the module doc.
    assert row.agreement >= 0.25 and row.mean_diff_lsb <= 40
    assert np.isfinite(qat.predict(coverage.images(coverage.SPECS_BY_NAME[name], 2, 3),
                                   verbose=0)).all()
    # The committed table was made by this code: its structural columns match.
    cells = dict(zip(coverage.COLUMNS, coverage._cells(row)))
    for column in ("input", "params", "fused conv-BN", "fake quants (act / weight)",
                   "integer-only"):
        assert TABLE[name][column] == cells[column], (column, "regenerate docs/coverage.md")

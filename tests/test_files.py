"""tfqat.files: atomic writes with ordinary permissions."""

import os
import stat

import pytest

from tfqat.files import atomic_write_bytes, new_file_mode


def test_writes_the_bytes_with_the_permissions_open_would_give(tmp_path):
    path = tmp_path / "model.tflite"
    atomic_write_bytes(path, b"abc")
    assert path.read_bytes() == b"abc"
    reference = tmp_path / "reference"
    reference.write_bytes(b"")
    assert stat.S_IMODE(os.stat(path).st_mode) == stat.S_IMODE(os.stat(reference).st_mode)
    assert new_file_mode() == stat.S_IMODE(os.stat(reference).st_mode)


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "model.tflite"
    path.write_bytes(b"old")

    with pytest.raises(TypeError):
        atomic_write_bytes(path, object())  # not bytes: fails inside the write
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.tflite"]


def test_a_missing_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        atomic_write_bytes(tmp_path / "no" / "model.tflite", b"x")

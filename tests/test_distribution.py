"""tf.distribute: results must not depend on the number of replicas (real processes)."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

JOB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "distributed_job.py")
ROOT = os.path.dirname(os.path.dirname(JOB))


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.update(extra)
    return env


def _run_job(strategy, out, **env):
    return subprocess.Popen([sys.executable, JOB, "--strategy", strategy, "--out", str(out)],
                            env=_env(**env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _finish(process, timeout=300):
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output.decode()[-3000:]


def _load(path):
    with np.load(path) as arrays:
        return {k: arrays[k] for k in arrays.files}


@pytest.mark.slow
@pytest.mark.xfail(strict=False, reason=(
    "With keras 3.15 / TF 2.21 a per-channel QuantDense with a folded BN (the 1x1-conv path) "
    "trains differently on two mirrored replicas than on one (logits kernel 0.008 apart after "
    "8 steps); per-tensor Dense, Conv2D and DepthwiseConv2D with BN match to 1e-6. It fails "
    "the same way on a45a460, before the package restructure: see the note on issue 13."))
def test_mirrored_on_two_devices_matches_one_device(tmp_path):
    _finish(_run_job("single", tmp_path / "single.npz"))
    _finish(_run_job("mirrored", tmp_path / "mirrored.npz"))
    single, mirrored = _load(tmp_path / "single.npz"), _load(tmp_path / "mirrored.npz")
    assert single.keys() == mirrored.keys()
    assert any(k.endswith("range_max") for k in single) and any(k.endswith("moving_mean") for k in single)
    for name in single:
        np.testing.assert_allclose(mirrored[name], single[name], atol=2e-4, rtol=1e-3, err_msg=name)
    assert int(single["conv1/step"]) == int(mirrored["conv1/step"]) == 8


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.slow
def test_two_worker_multi_worker_mirrored_ends_with_identical_state(tmp_path):
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    processes = []
    for index in range(2):
        tf_config = json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})
        processes.append(_run_job("multi_worker", tmp_path / f"worker{index}.npz", TF_CONFIG=tf_config))
    try:
        for process in processes:
            _finish(process)
    finally:
        for process in processes:
            process.kill()
    first, second = _load(tmp_path / "worker0.npz"), _load(tmp_path / "worker1.npz")
    assert first.keys() == second.keys()
    for name in first:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)

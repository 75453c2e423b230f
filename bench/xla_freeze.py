"""QAT step time with `bn_freeze_delay` set, against no delay, with and without XLA.

3 x Conv-BN-ReLU at 32x32, batch 32 (the case of issue 13). For each compile
mode (jit_compile False/True) three QAT models train side by side: no delay,
a delay not yet reached ("before freeze") and a delay already passed ("after
freeze"). Steps are timed interleaved (one step of each model per round), so
machine load hits all alike; the figure is the ratio of median step times to
the no-delay model's. Target (issue 13): at most 1.2 under XLA.

  python bench/xla_freeze.py              # writes bench/results/xla_freeze.json
  python bench/xla_freeze.py --conditional  # the tf.cond switch under XLA too (before the fix)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import keras
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tfqat  # noqa: E402
import tfqat.nn.layers as layers_lib  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "xla_freeze.json")
DELAYS = {"no delay": None, "before freeze": 10**9, "after freeze": 0}


def float_model(size=32, filters=32, blocks=3):
    inp = keras.Input((size, size, 3))
    x = inp
    for _ in range(blocks):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
    out = keras.layers.Dense(10, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
    return keras.Model(inp, out)


def measure(jit_compile, rounds, warmup, batch=32, seed=0):
    """Median seconds per step of each DELAYS model, timed interleaved."""
    keras.utils.set_random_seed(seed)
    model = float_model()
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(batch, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, batch)
    models = {}
    for name, delay in DELAYS.items():
        qat = tfqat.quantize_model(model, tfqat.QuantConfig(bn_freeze_delay=delay))
        qat.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                    jit_compile=jit_compile)
        for _ in range(warmup):
            qat.train_on_batch(x, y)
        models[name] = qat
    times = {name: [] for name in models}
    for _ in range(rounds):
        for name, qat in models.items():
            start = time.perf_counter()
            qat.train_on_batch(x, y)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--conditional", action="store_true",
                        help="keep the tf.cond freeze switch under XLA (the behaviour before)")
    parser.add_argument("--output", default=RESULTS)
    args = parser.parse_args(argv)
    if args.conditional:
        layers_lib._compiling_with_xla = lambda: False
    rows = []
    for jit_compile in (False, True):
        medians = measure(jit_compile, args.rounds, args.warmup)
        base = medians["no delay"]
        rows.append({"jit_compile": jit_compile, "conditional_under_xla": args.conditional,
                     "step_ms": {k: round(v * 1e3, 2) for k, v in medians.items()},
                     "ratio_to_no_delay": {k: round(v / base, 3) for k, v in medians.items()
                                           if k != "no delay"}})
        r = rows[-1]
        print(f"| jit_compile={jit_compile} | {r['step_ms']['no delay']:.1f} ms | "
              f"{r['ratio_to_no_delay']['before freeze']:.2f} | "
              f"{r['ratio_to_no_delay']['after freeze']:.2f} |", flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    tfqat.files.atomic_write_bytes(args.output, json.dumps(rows, indent=2).encode())
    return rows


if __name__ == "__main__":
    main()

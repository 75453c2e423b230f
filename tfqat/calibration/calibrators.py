"""Calibration: sets activation ranges from data, with no training.

`calibrate` runs a QAT model (from `tfqat.quantize_model`) on sample inputs
with its activation quantizers passed through, collects statistics of the
float activation at every tracked quantizer's input, and stores a range in
each. Uses:
- post-training quantization: float model -> quantize_model -> calibrate ->
  export_tflite;
- QAT that starts from good ranges instead of the first training batch.

Methods:
- "minmax": the global min and max over all batches.
- "percentile": the `percentile` and `100 - percentile` quantiles of the
  values (each tail on its own; 0 for the lower end of non-negative data).
- "entropy": the KL-divergence threshold of MXNet #9552 / TensorRT: a
  histogram of 8001 bins over [-max|x|, max|x|] ([0, max] for non-negative
  data), and the clipping threshold whose 255-level quantized distribution Q
  is closest to the clipped reference P, i.e. minimizes KL(P || Q).

Histograms have a fixed number of bins and are re-binned when the data's
extent grows, so memory does not grow with the number of batches.

One departure from MXNet/TensorRT: "entropy" leaves exact zeros out of the
KL search. Zero is always exactly representable (FakeQuant nudges the range
so that it is), so zeros cost nothing at any threshold; left in, the spike of
ReLU zeros in the first bin makes Q's spreading of the first level look costly
and drags the threshold down (half-normal data: 2.1 sigma instead of 4.0).
"""

from __future__ import annotations

import numbers
import warnings

import keras
import numpy as np

from tfqat.inputs import input_batches
from tfqat.nn.quantizers import bypass_quantizers, widen_to_min_range
from tfqat.rewrite import graph
from tfqat.rewrite.record import find_quantizer, record_of

METHODS = ("minmax", "percentile", "entropy")
NUM_BINS = 8001
NUM_QUANTIZED_BINS = 255
SMOOTHING_EPS = 1e-4
# "entropy" warns when a tensor gave fewer values than this: its 8001-bin
# histogram is then mostly empty bins and the KL minimum is unreliable.
SPARSE_WARNING_VALUES = NUM_BINS


# ---- histograms -------------------------------------------------------------

class StreamingHistogram:
    """Counts of values in `num_bins` equal bins over [lo, hi], kept without the data.

    While every value seen is >= 0 the bins span [0, hi] (one-sided); after the
    first negative value they span [-hi, hi] with hi = max|x|. When new data
    falls outside, the counts are re-binned onto the wider range assuming a
    uniform density inside each old bin (the cumulative count is interpolated
    at the new edges), so the state is the same size after any number of
    batches.

    Example:
      >>> h = StreamingHistogram(num_bins=101)
      >>> h.add(np.array([0.0, 1.0, 2.0]))
      >>> h.add(np.array([-4.0]))
      >>> h.lo, h.hi, h.total
      (-4.0, 4.0, 4.0)
    """

    def __init__(self, num_bins: int = NUM_BINS):
        if num_bins < 3 or num_bins % 2 == 0:
            raise ValueError(f"num_bins={num_bins} must be odd and >= 3, so that one bin is "
                             "centered on 0 for signed data.")
        self.num_bins = int(num_bins)
        self.counts = np.zeros(self.num_bins, np.float64)
        self.signed = False
        self.hi = 0.0
        self.exact_zeros = 0.0  # also counted in `counts` (in the bin of 0)
        self._zeros_before_range = 0.0  # zeros seen while every value was 0

    @property
    def lo(self) -> float:
        return -self.hi if self.signed else 0.0

    @property
    def edges(self) -> np.ndarray:
        return np.linspace(self.lo, self.hi, self.num_bins + 1)

    @property
    def total(self) -> float:
        return float(self.counts.sum() + self._zeros_before_range)

    @property
    def nbytes(self) -> int:
        """Size of the state; constant once the histogram exists."""
        return int(self.counts.nbytes)

    def add(self, values) -> None:
        x = np.asarray(values, np.float64).reshape(-1)
        if x.size == 0:
            return
        self.exact_zeros += float(np.count_nonzero(x == 0))
        signed = self.signed or bool(x.min() < 0)
        bound = float(np.abs(x).max()) if signed else float(x.max())
        if bound == 0.0 and self.hi == 0.0:
            self._zeros_before_range += x.size
            self.signed = signed
            return
        if signed != self.signed or bound > self.hi:
            self._rebin(signed, max(bound, self.hi))
        self.counts += np.histogram(x, bins=self.num_bins, range=(self.lo, self.hi))[0]

    def _rebin(self, signed: bool, hi: float) -> None:
        if self.hi == 0.0:
            self.signed, self.hi = signed, hi
            self.counts[:] = 0.0
        else:
            old_edges = self.edges
            cumulative = np.concatenate([[0.0], np.cumsum(self.counts)])
            self.signed, self.hi = signed, hi
            # The new range contains the old one; interp is 0 / total outside it.
            self.counts = np.diff(np.interp(self.edges, old_edges, cumulative))
        if self._zeros_before_range:
            self.counts[self.bin_of_zero()] += self._zeros_before_range
            self._zeros_before_range = 0.0

    def bin_of_zero(self) -> int:
        return self.num_bins // 2 if self.signed else 0

    def quantile(self, q: float) -> float:
        """The value below which a fraction `q` of the counts lies (linear inside a bin)."""
        if self.hi == 0.0:
            return 0.0
        cumulative = np.concatenate([[0.0], np.cumsum(self.counts)]) / self.counts.sum()
        k = int(np.clip(np.searchsorted(cumulative, q, side="left"), 1, self.num_bins)) - 1
        width = cumulative[k + 1] - cumulative[k]
        fraction = 0.0 if width <= 0 else float(np.clip((q - cumulative[k]) / width, 0.0, 1.0))
        edges = self.edges
        return float(edges[k] + fraction * (edges[k + 1] - edges[k]))


def _smooth(counts: np.ndarray, empty: np.ndarray, eps: float):
    """Moves `eps` of mass onto every empty bin, taken evenly from the others.

    None when no bin is non-empty, or when a non-empty bin would not stay positive.
    """
    num_empty = int(np.count_nonzero(empty))
    num_full = counts.size - num_empty
    if num_full == 0:
        return None
    smoothed = np.where(empty, eps, counts - eps * num_empty / num_full)
    if smoothed.min() <= 0:
        return None
    return smoothed


def _kl_of_clipping(sliced, below, above, levels, num_quantized_bins, eps):
    """KL(P || Q) for one candidate.

    P: `sliced` with the clipped mass (`below`, `above`) added to its end bins.
    Q: `sliced` merged into `num_quantized_bins` levels (`levels[k]` is bin k's
    level; the last level takes the remainder), each level's count spread
    evenly over the bins of that level where P is non-empty.
    """
    p = sliced.copy()
    p[0] += below
    p[-1] += above
    full = p != 0
    level_counts = np.bincount(levels, weights=sliced, minlength=num_quantized_bins)
    level_full = np.bincount(levels, weights=full, minlength=num_quantized_bins)
    q = (level_counts / np.maximum(level_full, 1))[levels] * full
    p, q = _smooth(p, ~full, eps), _smooth(q, q == 0, eps)
    if p is None or q is None:
        return np.inf
    p_total, q_total = p.sum(), q.sum()
    # KL of the normalized distributions, without normalizing the arrays.
    return float(np.dot(p, np.log(p / q)) / p_total + np.log(q_total / p_total))


def kl_divergence_curve(counts, signed: bool, num_quantized_bins: int = NUM_QUANTIZED_BINS,
                        eps: float = SMOOTHING_EPS):
    """KL(P || Q) of every candidate clipping of a histogram.

    Signed (bins centered on 0, odd count): candidate i keeps the 2i+1 central
    bins, i from num_quantized_bins // 2 to the last; its threshold lies i + 1/2
    bins from 0. One-sided (bins from 0): candidate i keeps the first i bins, i
    from num_quantized_bins to the last; its threshold lies i bins from 0.
    Returns (sizes, kl): the `i` of every candidate and its divergence.

    Example:
      >>> counts = np.histogram(np.abs(np.random.randn(10000)), 8001)[0]
      >>> sizes, kl = kl_divergence_curve(counts, signed=False)
      >>> best_threshold_in_bins = sizes[np.argmin(kl)]
    """
    counts = np.asarray(counts, np.float64)
    n = counts.size
    if signed and n % 2 == 0:
        raise ValueError(f"A signed histogram needs an odd number of bins, not {n}.")
    if n < num_quantized_bins:
        raise ValueError(f"{n} bins are fewer than num_quantized_bins={num_quantized_bins}.")
    cumulative = np.concatenate([[0.0], np.cumsum(counts)])
    total = cumulative[-1]
    bin_index = np.arange(n)
    levels_by_width = {}  # bins per level -> level of every bin; few distinct widths

    def levels(length):
        width = length // num_quantized_bins
        if width not in levels_by_width:
            levels_by_width[width] = np.minimum(bin_index // width, num_quantized_bins - 1)
        return levels_by_width[width][:length]

    if signed:
        center = n // 2
        sizes = np.arange(num_quantized_bins // 2, center + 1)
        kl = [_kl_of_clipping(counts[center - i:center + i + 1], cumulative[center - i],
                              total - cumulative[center + i + 1], levels(2 * i + 1),
                              num_quantized_bins, eps) for i in sizes]
    else:
        sizes = np.arange(num_quantized_bins, n + 1)
        kl = [_kl_of_clipping(counts[:i], 0.0, total - cumulative[i], levels(i),
                              num_quantized_bins, eps) for i in sizes]
    return sizes, np.array(kl)


def entropy_threshold(histogram: StreamingHistogram, num_quantized_bins=NUM_QUANTIZED_BINS,
                      eps=SMOOTHING_EPS, exclude_zeros=True) -> float:
    """The clipping threshold (>= 0) that minimizes KL(P || Q) for `histogram`.

    With `exclude_zeros`, exact zeros are taken out of the bin of 0 first (see
    the module docstring).

    Example:
      >>> h = StreamingHistogram(); h.add(np.random.randn(100000))
      >>> entropy_threshold(h) < h.hi
      True
    """
    if histogram.hi == 0.0:
        return 0.0
    counts = histogram.counts
    if exclude_zeros and histogram.exact_zeros:
        counts = counts.copy()
        zero_bin = histogram.bin_of_zero()
        counts[zero_bin] = max(counts[zero_bin] - histogram.exact_zeros, 0.0)
        if not counts.any():
            return 0.0
    sizes, kl = kl_divergence_curve(counts, histogram.signed, num_quantized_bins, eps)
    if not np.isfinite(kl).any():
        return histogram.hi  # nothing to choose from: keep everything
    best = int(sizes[int(np.argmin(kl))])
    bin_width = (histogram.hi - histogram.lo) / histogram.num_bins
    return (best + 0.5) * bin_width if histogram.signed else best * bin_width


# ---- calibrators: one per quantizer ------------------------------------------

class MinMaxCalibrator:
    """The global min and max of everything it saw.

    Example:
      >>> c = MinMaxCalibrator(); c.update(np.array([-1.0, 3.0])); c.compute_range()
      (-1.0, 3.0)
    """

    def __init__(self):
        self.min = np.inf
        self.max = -np.inf

    @property
    def nbytes(self) -> int:
        return 16

    def update(self, x: np.ndarray) -> None:
        self.min = min(self.min, float(x.min()))
        self.max = max(self.max, float(x.max()))

    def compute_range(self):
        return self.min, self.max


class PercentileCalibrator:
    """The `percentile` quantile (upper tail) and `100 - percentile` quantile (lower tail).

    For non-negative data the lower end is 0. The quantiles come from a
    StreamingHistogram, so they are exact to about one bin (range / 8001).

    Example:
      >>> c = PercentileCalibrator(99.0); c.update(np.random.randn(10000))
      >>> lo, hi = c.compute_range()   # about (-2.33, 2.33)
    """

    def __init__(self, percentile: float = 99.99, num_bins: int = NUM_BINS):
        self.percentile = float(percentile)
        self.histogram = StreamingHistogram(num_bins)

    @property
    def nbytes(self) -> int:
        return self.histogram.nbytes

    def update(self, x: np.ndarray) -> None:
        self.histogram.add(x)

    def compute_range(self):
        fraction = self.percentile / 100.0
        hi = self.histogram.quantile(fraction)
        lo = self.histogram.quantile(1.0 - fraction) if self.histogram.signed else 0.0
        return lo, hi


class EntropyCalibrator:
    """The KL-optimal threshold t: range [-t, t] for signed data, [0, t] for non-negative.

    A signed range is then narrowed to the data actually seen: asymmetric
    quantization does not need the side that holds no values. The histogram
    needs many more values than bins: with few, it is sparse and the KL search
    can pick a far too small threshold (see SPARSE_WARNING_VALUES).

    Example:
      >>> c = EntropyCalibrator(); c.update(np.random.randn(100000))
      >>> lo, hi = c.compute_range()   # about (-4.2, 4.2): the KL threshold, within [min, max]
    """

    def __init__(self, num_bins: int = NUM_BINS, num_quantized_bins: int = NUM_QUANTIZED_BINS):
        self.histogram = StreamingHistogram(num_bins)
        self.num_quantized_bins = int(num_quantized_bins)
        self.min = np.inf
        self.max = -np.inf

    @property
    def nbytes(self) -> int:
        return self.histogram.nbytes + 16

    def update(self, x: np.ndarray) -> None:
        self.histogram.add(x)
        self.min = min(self.min, float(x.min()))
        self.max = max(self.max, float(x.max()))

    @property
    def num_values(self) -> float:
        return self.histogram.total

    def compute_range(self):
        threshold = entropy_threshold(self.histogram, self.num_quantized_bins)
        if not self.histogram.signed:
            return 0.0, min(threshold, self.max)
        return max(-threshold, self.min), min(threshold, self.max)


def make_calibrator(method: str, percentile: float = 99.99):
    """A fresh calibrator for `method` ("minmax", "percentile" or "entropy").

    Example:
      >>> c = make_calibrator("percentile", 99.9)
      >>> for batch in batches: c.update(batch)
      >>> lo, hi = c.compute_range()
    """
    if method == "minmax":
        return MinMaxCalibrator()
    if method == "percentile":
        return PercentileCalibrator(percentile)
    if method == "entropy":
        return EntropyCalibrator()
    raise ValueError(f"Unknown calibration method {method!r}; use one of {', '.join(METHODS)}.")


# ---- calibrate -----------------------------------------------------------------

def tracked_quantizers(qat_model, inner: bool = True) -> list:
    """The ActivationQuantizers of `qat_model` whose range comes from data (not fixed),
    as its quantization record lists them; inner=False leaves out those that a layer
    calls inside its own `call` (they have no tensor of the model graph).

    Example:
      >>> [q.name for q in tracked_quantizers(tfqat.quantize_model(model))][:2]
      ['image_fq', 'conv1_fq']
    """
    record = record_of(qat_model)
    entries = [record.quantizer(name) for name in record.tracked_quantizers()]
    return [find_quantizer(qat_model, entry) for entry in entries
            if inner or entry.owner is None]


def quantizer_input_model(qat_model, quantizers) -> keras.Model:
    """A model from `qat_model`'s inputs to the input tensor of each quantizer.

    Example:
      >>> probe = quantizer_input_model(qat, tracked_quantizers(qat))
      >>> with bypass_quantizers(qat):
      ...     float_activations = probe(x, training=False)
    """
    try:
        outputs = [graph.untied_call(quantizer)[0] for quantizer in quantizers]
        return keras.Model(qat_model.input, outputs, name=f"{qat_model.name}_probe")
    except (AttributeError, ValueError) as err:
        raise ValueError(
            f"Cannot reach the quantizers of model '{qat_model.name}' from its inputs ({err}). "
            "Calibrate the Functional model returned by tfqat.quantize_model itself, not a "
            "model that wraps it.") from err


def run_probe(probe, batch) -> list:
    """The probe's outputs on `batch` as a flat list (Keras returns a lone output bare)."""
    return keras.tree.flatten(probe(batch, training=False))


def calibrate(qat_model, data, method: str = "minmax", num_batches=None, batch_size: int = 32,
              percentile: float = 99.99) -> dict:
    """Sets every tracked activation range of a QAT model from `data`; no training.

    The statistics are those of the float activations: all activation
    quantizers are passed through while the data runs (weights stay
    fake-quantized, BatchNorm uses its moving statistics). Each tracked
    quantizer then holds a range that contains 0 and counts as calibrated, so
    `export_tflite` accepts the model; fixed ranges (softmax, sigmoid, tanh)
    are left alone. Training afterwards continues the range EMA from here.

    Args:
      qat_model: a model made by `tfqat.quantize_model`.
      data: a numpy array of inputs, or an iterable / tf.data.Dataset of input
        batches or (x, y) batches.
      method: "minmax", "percentile" or "entropy" (KL divergence, 8001 bins;
        it needs many values per tensor and warns when one gave fewer than
        8001; prefer "percentile" for small calibration sets).
      num_batches: use at most this many batches (None: all).
      batch_size: rows per batch when `data` is an array.
      percentile: for "percentile", in (0, 100].

    Returns:
      {quantizer name: (min, max)} as stored.

    Example:
      >>> qat = tfqat.quantize_model(float_model)
      >>> ranges = calibrate(qat, x_train[:512], method="entropy")
      >>> tfqat.export_tflite(qat, "ptq_int8.tflite")
    """
    if method not in METHODS:
        raise ValueError(f"Unknown calibration method {method!r}; use one of "
                         f"{', '.join(METHODS)}.")
    if not isinstance(percentile, numbers.Real) or not 0 < percentile <= 100:
        raise ValueError(f"percentile={percentile!r} must be a number in (0, 100], e.g. 99.99.")
    quantizers = tracked_quantizers(qat_model)  # quantizers inside layers included
    if not quantizers:
        raise ValueError(f"Model '{qat_model.name}' has no tracked activation quantizers to "
                         "calibrate; pass the model returned by tfqat.quantize_model(model).")
    calibrators = [make_calibrator(method, percentile) for _ in quantizers]
    seen = 0

    def observer(quantizer, calibrator):
        def observe(inputs):
            value = np.asarray(inputs, np.float32)
            if not np.isfinite(value).all():
                raise ValueError(f"calibrate: the input of quantizer '{quantizer.name}' has "
                                 f"NaN or infinite values on batch {seen}; check the "
                                 "model's weights and the data.")
            calibrator.update(value)
        return observe

    # Each quantizer sees its float input as the model runs eagerly with every quantizer
    # passed through; quantizers inside layers (QuantWrapper) are reached the same way.
    for quantizer, calibrator in zip(quantizers, calibrators):
        quantizer.observer = observer(quantizer, calibrator)
    try:
        with bypass_quantizers(qat_model):
            for batch in input_batches(qat_model, data, batch_size, num_batches, what="calibrate"):
                qat_model(batch, training=False)
                seen += 1
    finally:
        for quantizer in quantizers:
            quantizer.observer = None
    if seen == 0:
        raise ValueError("calibrate: data gave no batches; pass at least one batch of inputs.")
    sparse = [q.name for q, c in zip(quantizers, calibrators)
              if isinstance(c, EntropyCalibrator) and c.num_values < SPARSE_WARNING_VALUES]
    if sparse:
        warnings.warn(
            f"calibrate(method='entropy'): fewer than {SPARSE_WARNING_VALUES} values reached "
            f"{', '.join(sparse)}; their KL thresholds come from sparse histograms and may clip "
            "far too much. Pass more data, or use method='percentile'.", stacklevel=2)
    ranges = {}
    for quantizer, calibrator in zip(quantizers, calibrators):
        lo, hi = calibrator.compute_range()
        lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
        lo, hi = widen_to_min_range(lo, hi)  # a dead (all-zero) activation
        quantizer.set_range(lo, hi)
        ranges[quantizer.name] = quantizer.current_range()
    return ranges

"""tfqat: quantization-aware training of Keras 3 models with integer-only TFLite export.

Example:
  >>> import tfqat
  >>> qat = tfqat.quantize_model(float_model, tfqat.QuantConfig(bn_freeze_delay=1000))
  >>> qat.compile(...); qat.fit(...)
  >>> tfqat.export_tflite(qat, "model_int8.tflite")
"""

from tfqat.logs import begin_app_import

_end_app_import = begin_app_import()  # the apps start quiet (tfqat/logs.py)

from tfqat.nn.activations import QuantActivation
from tfqat.calibration.batchnorm import reestimate_batchnorm
from tfqat.calibration.calibrators import calibrate
from tfqat.config import LayerQuantConfig, QuantConfig
from tfqat.diagnostics.report import LayerReport, TFLiteDiff, compare_tflite, layer_report
from tfqat.diagnostics.fidelity import OpFidelity, op_fidelity
from tfqat.diagnostics.int8_eval import evaluate_int8
from tfqat.export.tflite import ExportError, NotIntegerOnlyError, export_tflite
from tfqat.rewrite.graph import GraphError
from tfqat.export.reader import TFLiteReport, inspect_tflite
from tfqat.nn.layers import (FusedQuantLayer, QuantBatchNormalization, QuantConv1D, QuantConv2D,
                          QuantConv2DTranspose, QuantDense, QuantDepthwiseConv2D, QuantRescaling)
from tfqat.nn.quantizers import ActivationQuantizer, bypass_quantizers
from tfqat.nn.attention import QuantMultiHeadAttention
from tfqat.nn.composite import CompositeQuantLayer
from tfqat.nn.embedding import QuantEmbedding
from tfqat.nn.keras_op import KerasOpLayer
from tfqat.nn.normalization import QuantLayerNormalization
from tfqat.rewrite.quantize import UnsupportedLayerError, quantize_model
from tfqat.rewrite.record import QATModel, QuantizationRecord, record_of
from tfqat.rewrite.registry import QuantizeSpec, QuantRegistry, QuantWrapper, WeightQuant
from tfqat.rewrite.rules.base import OutputQuant, Replacement, RewriteRule, Step

_end_app_import()

__version__ = "0.1.0"

__all__ = [
    "LayerReport", "TFLiteDiff", "bypass_quantizers", "calibrate", "compare_tflite", "layer_report",
    "ActivationQuantizer", "CompositeQuantLayer", "ExportError", "FusedQuantLayer", "GraphError", "LayerQuantConfig",
    "NotIntegerOnlyError", "OpFidelity", "QuantActivation", "QuantBatchNormalization",
    "QuantConfig", "QuantConv1D", "QuantConv2D", "QuantConv2DTranspose", "QuantDense",
    "KerasOpLayer", "QuantDepthwiseConv2D", "QuantEmbedding", "QuantLayerNormalization",
    "QuantMultiHeadAttention", "QuantRescaling", "TFLiteReport", "UnsupportedLayerError",
    "evaluate_int8", "export_tflite", "inspect_tflite", "op_fidelity", "quantize_model",
    "OutputQuant", "QATModel", "QuantRegistry", "QuantWrapper", "QuantizationRecord",
    "QuantizeSpec", "Replacement", "RewriteRule", "Step", "WeightQuant", "record_of", "reestimate_batchnorm",
]

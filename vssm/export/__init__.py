"""Deployment exports of the zoo's models (ONNX). A floor at the engine's level: it imports ``vssm.ops``,
``vssm.models`` and ``vssm.engine.checkpoint``; nothing in ``vssm`` imports it (``tools/export_onnx.py`` does)."""
from .onnx import (DEFAULT_OPSET, MIN_OPSET, ExportError, ExportResult, InputSizeError, OpsetError, UnknownModelError,
                   UnsupportedOpError, check_onnx, create_export_model, export_onnx, exportable_models, run_onnx)

__all__ = ["DEFAULT_OPSET", "MIN_OPSET", "ExportError", "ExportResult", "InputSizeError", "OpsetError",
           "UnknownModelError", "UnsupportedOpError", "check_onnx", "create_export_model", "export_onnx",
           "exportable_models", "run_onnx"]

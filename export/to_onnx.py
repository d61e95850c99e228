"""Export a trained fpr_plugin backbone, or an arcface_torch backbone.pth, to an insightface-compatible ONNX model.

Usage: python export/to_onnx.py CHECKPOINT --output model.onnx [--network r50] [--embedding-size 512]
       [--opset N] [--batch dynamic|N] [--recipe R]
(the same as the ``fpr-export`` console script; the library part is fpr_plugin.export).
"""

import sys
from pathlib import Path

try:
    from fpr_plugin.export import main
except ImportError:  # run from a checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from fpr_plugin.export import main

if __name__ == "__main__":
    sys.exit(main())

"""Packaging for fpr-plugin: the CIFP fairness loss for face-recognition training."""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent

setup(
    name="fpr-plugin",
    version="0.1.0",
    description=(
        "Consistent instance false positive (CIFP) fairness loss for "
        "InsightFace/TFace-style face-recognition training, with ONNX export "
        "and per-group fairness evaluation"
    ),
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # recipes/ (top level, where users read them) is installed as the package fpr_plugin.recipes, so the
    # shipped recipes are found in a regular install as in an editable one (fpr_plugin.train.config.recipes_dir).
    packages=find_packages(include=["fpr_plugin", "fpr_plugin.*"]) + ["fpr_plugin.recipes"],
    package_dir={"fpr_plugin.recipes": "recipes"},
    # the benchmark's 5-seed figures that fpr-demo prints beside its own (bench/benchmark_reference.py)
    package_data={"fpr_plugin": ["benchmark_reference.json"]},
    install_requires=[
        "torch>=2.1",
        "numpy",
        "easydict",
        "opencv-python",
        "onnx",
        "onnxruntime",
        "insightface",
        "tqdm",
        "matplotlib",
    ],
    extras_require={
        "test": ["pytest", "scikit-learn", "pyyaml"],
        "tensorboard": ["tensorboard"],
    },
    entry_points={
        "console_scripts": [
            "fpr-train=fpr_plugin.train.cli:main",
            "fpr-eval=fpr_plugin.eval.cli:main",
            "fpr-calibrate=fpr_plugin.eval.calibration.cli:main",
            "fpr-build-rec=fpr_plugin.data.build_rec:main",
            "fpr-make-synthetic=fpr_plugin.data.synthetic:main",
            "fpr-export=fpr_plugin.export:main",
            "fpr-demo=fpr_plugin.demo:main",
        ],
    },
)

"""fpr-train command line: errors, dry run, a short run, python -m."""

from __future__ import annotations

import subprocess
import sys

from fpr_plugin.train.cli import main


def test_bad_input_returns_an_error_naming_it(tmp_path, capsys):
    assert main([str(tmp_path / "missing.py")]) == 2
    assert "missing.py" in capsys.readouterr().err
    recipe = tmp_path / "r.py"
    recipe.write_text("config = {}\n")
    assert main([str(recipe), "--set", "weight_decya=1e-4"]) == 2
    assert "did you mean 'weight_decay'" in capsys.readouterr().err
    assert main([str(recipe), "--set", f"rec={tmp_path / 'nowhere'}", "--set", f"output={tmp_path / 'o'}"]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_dry_run_resolves_sizes_from_the_records(tiny_recipe, capsys):
    assert main([str(tiny_recipe), "--loss", "cosface", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert '"num_classes": 8' in out and '"num_image": 64' in out
    assert "classifier (8, 16)" in out


def test_short_run_and_resume_flag(tiny_recipe, tmp_path):
    out = tmp_path / "run"
    args = [str(tiny_recipe), "--loss", "fpr_penalty", "--set", f"output={out}"]
    assert main(args + ["--set", "max_steps=2"]) == 0
    assert main(args + ["--set", "max_steps=3", "--resume"]) == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3
    assert (out / "model.pt").is_file() and (out / "config.json").is_file()


def test_python_dash_m_entry_point():
    run = subprocess.run([sys.executable, "-m", "fpr_plugin.train", "--help"], capture_output=True, text=True)
    assert run.returncode == 0 and "--loss" in run.stdout and "--resume" in run.stdout

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


def test_recipe_errors_are_one_line_naming_the_file_and_line(tmp_path, capsys):
    cases = [
        ("config = {}\nconfig['lr'] = (\n", [], "syntax error"),
        ("config = {'lr': 'fast'}\n", [], "key 'lr' expects a number"),
        ("config = {'network': 'r999'}\n", [], "unknown backbone 'r999'"),
        ("config = {'loss': 'fpr_penalty',\n          'loss_params': {'gamma_u': 2}}\n", [], "gamma_u must be in"),
    ]
    for body, extra, expected in cases:
        recipe = tmp_path / "r.py"
        recipe.write_text(body)
        assert main([str(recipe), "--dry-run", *extra]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert f"recipe {recipe}, line {body.count(chr(10))}" in err and expected in err, err
    recipe = tmp_path / "ok.py"
    recipe.write_text("config = {}\n")
    for override, expected in [("loss_params.fpr_penalty.gamma_u=2", "gamma_u must be in"),
                               ("network=r999", "unknown backbone 'r999'")]:
        assert main([str(recipe), "--loss", "fpr_penalty", "--set", override, "--dry-run"]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and f"--set {override}: " in err and expected in err, err


def test_help_lists_the_config_keys():
    run = subprocess.run([sys.executable, "-m", "fpr_plugin.train", "--help"], capture_output=True, text=True)
    assert run.returncode == 0 and "runs as code" in run.stdout
    for line in ["lr (float, default 0.1, positive)", "fp16 (False|fp16|bf16, default False)",
                 "keep_checkpoints (int, default 2, >= 1, may change on --resume)"]:
        assert line in run.stdout

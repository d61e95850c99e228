"""``kill -9`` of fpr-make-synthetic half-way: no output folder, and the next run removes and names the leftover."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

from fpr_plugin.data import synthetic as syn
from fpr_plugin.data.record_set import read_record_set

MINI = syn.SizeSpec(train_identities=4, train_images=2, test_identities=20, test_images=2, pairs_per_fold=1)

DRIVER = textwrap.dedent("""
    import os, signal, sys
    from fpr_plugin.data import record_set, synthetic as syn
    write = record_set.write_record_set
    def write_then_die(*args, **kwargs):
        write(*args, **kwargs)  # the training set is complete in the partial folder; the test sets are not
        os.kill(os.getpid(), signal.SIGKILL)
    record_set.write_record_set = write_then_die
    syn.make_synthetic(sys.argv[1], seed=3, size=syn.SizeSpec(4, 2, 20, 2, 1), design="rare", overwrite=True)
""")


def test_killed_make_synthetic_leaves_no_output_and_the_next_run_cleans_up(tmp_path, capsys):
    out = tmp_path / "bench"
    run = subprocess.run([sys.executable, "-c", DRIVER, str(out)], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert run.returncode == -signal.SIGKILL, run.stderr
    assert not out.exists()
    left = sorted(p.name for p in tmp_path.iterdir())
    assert len(left) == 1 and left[0].startswith(".bench.partial-") and (tmp_path / left[0] / "train").is_dir(), left
    capsys.readouterr()
    manifest = syn.make_synthetic(out, seed=3, size=MINI, design="rare")
    assert f"note: removed {tmp_path / left[0]}, left by an interrupted fpr-make-synthetic" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench"]
    assert sorted(p.name for p in out.iterdir()) == ["calib", "dense", "rfw", "synthetic.json", "train"]
    assert read_record_set(out / "train").num_image == manifest["train"]["num_image"] == 2 * sum(
        manifest["train"]["identities_per_group"].values())

"""Two "nodes" of two gloo processes each (two torchrun --nnodes 2 on localhost) follow one process; resume after a node dies."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from fpr_plugin.train import trainer
from fpr_plugin.train.config import load_config
from trajectory import losses_of, per_rank_batchnorm

SETS = ["max_steps=5", "save_every=3", "keep_checkpoints=5", "frequent=1", "num_workers=0",
        "grad_clip=None", "lr=0.002"]
CRASH = Path(__file__).with_name("multinode_crash.py")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_two_nodes(recipe: Path, output: Path, extra: list[str] = (), crash_second_after: int | None = None):
    """Two torchrun agents, --nnodes 2 --nproc_per_node 2, meeting at a c10d rendezvous on localhost."""
    endpoint = f"127.0.0.1:{free_port()}"
    rdzv_id = uuid.uuid4().hex[:8]
    train_args = [str(recipe), "--loss", "fpr_penalty",
                  *[a for s in SETS + [f"output={output}", *extra] for a in ("--set", s)]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    nodes = []
    for node in range(2):
        program = ["-m", "fpr_plugin.train"]
        node_env = dict(env)
        if node == 1 and crash_second_after is not None:
            program = [str(CRASH)]
            node_env["FPR_TEST_KILL_AFTER_STEP"] = str(crash_second_after)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "2",
               "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", rdzv_id,
               "--rdzv-conf", f"is_host={1 if node == 0 else 0}", "--max-restarts", "0",
               *program, *train_args]
        nodes.append(subprocess.Popen(cmd, env=node_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True, start_new_session=True))
    outputs = []
    for proc in nodes:
        try:
            out, _ = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            out, _ = proc.communicate()
        outputs.append((proc.returncode, out))
    return outputs


@pytest.mark.distributed
@pytest.mark.slow
def test_two_nodes_match_one_process_and_resume_after_a_node_dies(tiny_recipe, tmp_path, one_thread):
    # 2 nodes x 2 processes = 4 ranks: 4 samples and 2 of the 8 classes each
    nodes = tmp_path / "nodes"
    for code, log in launch_two_nodes(tiny_recipe, nodes):
        assert code == 0, log[-4000:]
    one = tmp_path / "one"
    trainer.train(load_config(tiny_recipe, loss="fpr_penalty", overrides=SETS + [f"output={one}"]),
                  build_backbone=per_rank_batchnorm(4))
    reference = losses_of(one)
    assert len(reference) == 5
    uninterrupted = losses_of(nodes)
    assert uninterrupted == pytest.approx(reference, rel=1e-4)

    # the second node dies right after the checkpoint of step 3; the first fails with it
    crashed = tmp_path / "crashed"
    (first, first_log), (second, second_log) = launch_two_nodes(tiny_recipe, crashed, crash_second_after=3)
    assert second != 0 and first != 0, (first_log[-3000:], second_log[-3000:])
    assert [json.loads(line)["global_step"] for line in (crashed / "metrics.jsonl").read_text().splitlines()][-1] == 3
    # both nodes again with --resume: steps 4 and 5 from the step-3 checkpoint, as if never interrupted
    for code, log in launch_two_nodes(tiny_recipe, crashed, extra=["resume=True"]):
        assert code == 0, log[-4000:]
    assert "resumed from" in (crashed / "training.log").read_text()
    assert losses_of(crashed) == pytest.approx(uninterrupted, rel=1e-6)

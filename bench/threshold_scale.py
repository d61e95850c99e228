"""The exact FPR threshold at scale: top-k + all-gather against rounds of histograms, on W gloo processes.

For each world size W, W real gloo processes (spawned here) each hold one
rank's block of non-target cosines, class-sharded as under PartialFC: every
rank has the same (gathered) rows and its own sampled columns, one target
column per row somewhere. Each step is ``mine_above_threshold`` (the global
``T_u`` and this rank's entries above it), once with ``method="topk"`` (each
rank's top k, all-gathered) and once with ``method="histogram"``, interleaved
step by step so that load on a shared machine hits both alike.

Measured per step, per rank, at the collective calls (``torch.distributed``
functions wrapped while the step runs):
- bytes a rank hands to collectives (its send buffers) and receives into its
  result buffers;
- the time of the step (slowest rank, median over steps);
- the peak memory of the step above the level before it (slowest rank):
  peak RSS through ``/proc/self/clear_refs`` on CPU (see bench/head_overhead.py),
  ``max_memory_allocated`` on CUDA.

Blocks (per rank, rows x columns; WebFace42M at 64 ranks is 8,192 x 6,437:
global batch 8,192, 2,059,906 identities, PartialFC sample_rate 0.2):
- ``bupt``: BUPT-Balancedface N=512, C=28,000 split over the W ranks, k=1,434.
- ``webface/4``: 2,048 x 1,609 (the WebFace42M per-rank shape at 1/4 each side), W <= 8.
- ``webface/8``: 1,024 x 805 (1/8 each side), the small blocks for W = 16 and 64.
The k values go up to WebFace42M's k (337,500) on these smaller blocks, which
is what makes the top-k path's cost grow (gamma_u above 1e-4 in effect).
The machine running this has 2 cores: W processes share them, so the times
of both methods include W-fold oversubscription; compare the ratios.

Usage: ``python bench/threshold_scale.py [--worlds 1,2,4,8,16,64] [--steps 3] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")  # large buffers mmap-ed, returned on free (children inherit)

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from head_overhead import PeakMemory  # noqa: E402

from fpr_plugin.distributed import Layout, shard_bounds  # noqa: E402
from fpr_plugin.losses.selection import fpr_rank, mine_above_threshold  # noqa: E402

METHODS = ("topk", "histogram")
WEBFACE_K = 337_500  # ceil(1e-4 * 8192 * (0.2 * 2_059_906 - 1))
BUPT_K = fpr_rank(1e-4, 512 * 27999)
KS = (BUPT_K, 4096, 8192, 16384, 32768, 100_000, WEBFACE_K)
# The top-k path all-gathers W * k floats on every rank at once: skip it where the W
# processes together would hold more than this in gathered buffers (the histogram path still runs).
GATHER_BUDGET = 6 * 2**30


def blocks_for(world: int) -> list[tuple[str, int, int, tuple[int, ...]]]:
    """(name, rows, global columns, ks) of the blocks run at ``world`` ranks; each rank holds its shard of the columns."""
    out = [("bupt", 512, 28000, (BUPT_K,))]
    if world <= 8:
        out.append(("webface/4", 2048, 1609 * world, KS))
    else:
        out.append(("webface/8", 1024, 805 * world, KS))
    return out


class Traffic:
    """Counts the bytes that this rank hands to / receives from torch.distributed collectives."""

    WRAPPED = ("all_reduce", "all_gather", "all_gather_into_tensor", "broadcast", "reduce_scatter_tensor", "all_to_all")

    def __init__(self) -> None:
        self.sent = self.received = self.calls = 0
        self.saved = {name: getattr(dist, name) for name in self.WRAPPED}

    @staticmethod
    def _bytes(obj) -> int:
        if isinstance(obj, torch.Tensor):
            return obj.numel() * obj.element_size()
        return sum(Traffic._bytes(t) for t in obj)

    def __enter__(self) -> "Traffic":
        for name, real in self.saved.items():
            setattr(dist, name, self._wrap(name, real))
        return self

    def __exit__(self, *exc) -> None:
        for name, real in self.saved.items():
            setattr(dist, name, real)

    def _wrap(self, name, real):
        def counted(*args, **kwargs):
            self.calls += 1
            if name in ("all_reduce", "broadcast"):
                self.sent += self._bytes(args[0])
                self.received += self._bytes(args[0])
            else:  # (output(s), input(s))
                self.received += self._bytes(args[0])
                self.sent += self._bytes(args[1])
            return real(*args, **kwargs)

        return counted


def make_block(rows: int, columns: int, world: int, rank: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """This rank's cosines (uniform in [-1, 1], rounded to bfloat16 steps for ties) and local labels."""
    lo, hi = shard_bounds(columns, world, rank)
    g = torch.Generator().manual_seed(seed * 1000 + rank)
    cos = torch.empty(rows, hi - lo).uniform_(-0.2, 0.6, generator=g)
    labels_g = torch.randint(0, columns, (rows,), generator=torch.Generator().manual_seed(seed))
    inside = (labels_g >= lo) & (labels_g < hi)
    labels = torch.where(inside, labels_g - lo, torch.full_like(labels_g, -1))
    cos[inside.nonzero().reshape(-1), labels[inside]] = 0.9  # targets high, excluded from T_u
    return cos, labels, columns


def _worker(rank: int, world: int, port: int, steps: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world, timeout=timedelta(minutes=20)
        )
    meter = PeakMemory(torch.device("cpu"))
    results = []
    try:
        for name, rows, columns, ks in blocks_for(world):
            cos, labels, num_classes = make_block(rows, columns, world, rank, seed=1)
            layout = Layout.class_sharded(num_classes) if world > 1 else Layout.local()
            negatives = rows * (num_classes - 1)
            for k in ks:
                if k > negatives // 2:
                    continue
                skip_topk = world * world * k * 4 * 2 > GATHER_BUDGET
                methods = [m for m in METHODS if not (m == "topk" and skip_topk)]
                record = {"block": name, "rows": rows, "columns": num_classes, "k": k, "world": world}
                per = {m: {"time": [], "peak": [], "sent": 0, "received": 0, "calls": 0, "threshold": None} for m in methods}
                for method in methods:  # warm-up
                    mine_above_threshold(cos, labels, k, layout, method=method)
                for step in range(steps):
                    for method in methods if step % 2 == 0 else methods[::-1]:
                        if world > 1:
                            dist.barrier()
                        meter.start()
                        with Traffic() as traffic:
                            begin = time.perf_counter()
                            threshold, mined_rows, _, _ = mine_above_threshold(cos, labels, k, layout, method=method)
                            elapsed = time.perf_counter() - begin
                        per[method]["time"].append(elapsed)
                        per[method]["peak"].append(meter.stop())
                        per[method].update(sent=traffic.sent, received=traffic.received, calls=traffic.calls)
                        per[method]["threshold"] = threshold.item()
                        per[method]["mined"] = int(mined_rows.numel())
                record["methods"] = per
                results.append(record)
        if world > 1:
            gathered = [None] * world
            dist.all_gather_object(gathered, results)
        else:
            gathered = [results]
        if rank == 0:
            Path(out_dir, f"world{world}.json").write_text(json.dumps(gathered))
    finally:
        if world > 1:
            dist.destroy_process_group()


def _spawned(rank: int, world: int, port: int, steps: int, out_dir: str) -> None:
    _worker(rank, world, port, steps, out_dir)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def summarize(per_rank: list[list[dict]]) -> list[dict]:
    """Per configuration: the slowest rank per step (median over steps), the largest peak, rank 0's bytes."""
    rows = []
    for index, record in enumerate(per_rank[0]):
        out = {key: record[key] for key in ("block", "rows", "columns", "k", "world")}
        for method in record["methods"]:
            runs = [ranks[index]["methods"][method] for ranks in per_rank]
            steps = len(runs[0]["time"])
            step_time = [max(run["time"][s] for run in runs) for s in range(steps)]
            out[method] = dict(
                time=statistics.median(step_time),
                step_times=step_time,
                peak=max(max(run["peak"]) for run in runs),
                sent=max(run["sent"] for run in runs),
                received=max(run["received"] for run in runs),
                calls=runs[0]["calls"],
                threshold={run["threshold"] for run in runs},
                mined=sum(run["mined"] for run in runs),
            )
        if "topk" in out:
            assert out["topk"]["threshold"] == out["histogram"]["threshold"], f"thresholds differ: {out}"
            assert out["topk"]["mined"] == out["histogram"]["mined"], f"mined counts differ: {out}"
            out["time_ratio"] = statistics.median(
                h / t for h, t in zip(out["histogram"]["step_times"], out["topk"]["step_times"])
            )
        rows.append(out)
    return rows


def fmt_bytes(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n < 2**20 else f"{n / 2**20:.1f} MiB"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worlds", default="1,2,4,8,16,64", help="comma-separated world sizes")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="also write every figure here")
    args = parser.parse_args(argv)
    worlds = [int(w) for w in args.worlds.split(",")]
    print("threshold selection: topk (today) vs histogram rounds; CPU, gloo, 1 thread per process, 2-core shared machine")
    print("time: slowest rank, median of steps; hist/topk: median of per-step ratios; peak: max over ranks of the")
    print("step's peak RSS above the level before it; sent/received: per rank, counted at the collective calls")
    header = (
        f"{'W':>3} {'block':<10} {'k':>7} | {'topk ms':>9} {'hist ms':>9} {'hist/topk':>9} | "
        f"{'topk sent':>10} {'topk recv':>10} {'hist sent':>10} {'calls':>5} | {'topk MiB':>8} {'hist MiB':>8}"
    )
    everything = []
    with tempfile.TemporaryDirectory() as tmp:
        for world in worlds:
            begin = time.perf_counter()
            if world == 1:
                _worker(0, 1, 0, args.steps, tmp)
            else:
                mp.start_processes(
                    _spawned, args=(world, free_port(), args.steps, tmp), nprocs=world, start_method="spawn", join=True
                )
            rows = summarize(json.loads(Path(tmp, f"world{world}.json").read_text()))
            everything.extend(rows)
            print(f"\nW={world} ({time.perf_counter() - begin:.0f} s wall)")
            print(header)
            for row in rows:
                hist = row["histogram"]
                topk = row.get("topk")
                cells = [f"{row['world']:>3} {row['block']:<10} {row['k']:>7} |"]
                if topk:
                    cells.append(f"{topk['time'] * 1e3:>9.1f} {hist['time'] * 1e3:>9.1f} {row['time_ratio']:>9.2f} |")
                    cells.append(f"{fmt_bytes(topk['sent']):>10} {fmt_bytes(topk['received']):>10}")
                else:
                    cells.append(f"{'skipped':>9} {hist['time'] * 1e3:>9.1f} {'':>9} |")
                    cells.append(f"{'-':>10} {'-':>10}")
                cells.append(f"{fmt_bytes(hist['sent']):>10} {hist['calls']:>5} |")
                topk_mib = f"{topk['peak'] / 2**20:>8.1f}" if topk else f"{'-':>8}"
                cells.append(f"{topk_mib} {hist['peak'] / 2**20:>8.1f}")
                print(" ".join(cells), flush=True)
    sent = [row["histogram"]["sent"] for row in everything]
    print(f"\nhistogram bytes sent per rank per step: {min(sent)} .. {max(sent)} B over all W and k (target < 64 KiB)")
    if args.json:
        for row in everything:
            for method in METHODS:
                if method in row:
                    row[method]["threshold"] = sorted(row[method]["threshold"])
        args.json.write_text(json.dumps(everything, indent=1))


if __name__ == "__main__":
    main()

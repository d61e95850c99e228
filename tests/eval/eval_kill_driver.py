"""``python eval_kill_driver.py PHASE ARGV...``: run fpr-eval and SIGKILL itself at one point of the run.

PHASE: ``embedding`` (after the first batch), ``cache-write`` (half-way through writing a cached array),
``writing`` (after the report's first plot), ``swap`` (between the two renames of the folder swap),
``none`` (run to the end).
"""
import os
import signal
import sys


def _die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _arm(phase: str) -> None:
    from fpr_plugin import atomic
    from fpr_plugin.eval import cache, report, runner

    if phase == "embedding":
        build = runner.build_embedder

        def build_dying(*args):
            embedder, calls = build(*args), []
            embed = embedder.embed

            def embed_then_die(*a, **k):
                calls.append(1)
                if len(calls) == 2:
                    _die()
                return embed(*a, **k)

            embedder.embed = embed_then_die
            return embedder

        runner.build_embedder = build_dying
    elif phase == "cache-write":
        def save_half(path, array):
            def write(tmp):
                with open(tmp, "wb") as handle:
                    handle.write(b"\x93NUMPY" + b"\0" * 64)
                _die()

            atomic.atomic_write(path, write)

        cache.save_array_atomic = save_half
    elif phase == "writing":
        save = report._save_figure

        def save_then_die(fig, path):
            save(fig, path)
            _die()

        report._save_figure = save_then_die
    elif phase == "swap":
        replace = os.replace

        def replace_then_die(src, dst):
            replace(src, dst)
            if ".old-" in os.fspath(dst):  # the old folder moved aside, the new one not yet in place
                _die()

        atomic.os.replace = replace_then_die
    elif phase != "none":
        raise SystemExit(f"unknown phase {phase}")


if __name__ == "__main__":
    _arm(sys.argv[1])
    from fpr_plugin.eval.cli import main

    sys.exit(main(sys.argv[2:]))

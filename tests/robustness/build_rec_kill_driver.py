"""``python build_rec_kill_driver.py PHASE ARGV...``: run fpr-build-rec and SIGKILL itself at one point.

PHASE: ``writing`` (after the 40th image record of the new train.rec), ``closing`` (between the renames of
train.rec and train.idx inside the partial folder), ``swap`` (the old set moved aside, the new one not yet in
place), ``after-swap`` (the new set in place, the old one not yet removed), ``reindex`` (half-way through
writing the rebuilt train.idx), ``none`` (run to the end).
"""
import os
import signal
import sys


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _arm(phase: str) -> None:
    import shutil

    from fpr_plugin import atomic
    from fpr_plugin.data import recordio

    if phase == "writing":
        write_idx, calls = recordio.IndexedRecordWriter.write_idx, []

        def write_then_die(self, key, record):
            calls.append(key)
            if len(calls) == 41:  # the header placeholder, then 40 images
                self._rec.flush()
                _die()
            return write_idx(self, key, record)

        recordio.IndexedRecordWriter.write_idx = write_then_die
    elif phase == "closing":
        replace = os.replace

        def replace_then_die(src, dst):
            replace(src, dst)
            if os.fspath(dst).endswith("train.rec"):
                _die()

        recordio.os.replace = replace_then_die
    elif phase == "swap":
        replace = os.replace

        def replace_then_die(src, dst):
            replace(src, dst)
            if ".old-" in os.fspath(dst):
                _die()

        atomic.os.replace = replace_then_die
    elif phase == "after-swap":
        rmtree = shutil.rmtree

        def rmtree_or_die(path, *args, **kwargs):
            if ".old-" in os.fspath(path) and os.path.exists(path):
                _die()
            return rmtree(path, *args, **kwargs)

        shutil.rmtree = rmtree_or_die
    elif phase == "reindex":
        def write_half(path, write):
            def half(tmp):
                write(tmp)
                with open(tmp, "r+b") as handle:
                    handle.truncate(os.path.getsize(tmp) // 2)
                _die()

            return atomic_write(path, half)

        atomic_write = recordio.atomic_write
        recordio.atomic_write = write_half
    elif phase != "none":
        raise SystemExit(f"unknown phase {phase}")


if __name__ == "__main__":
    _arm(sys.argv[1])
    from fpr_plugin.data.build_rec import main

    sys.exit(main(sys.argv[2:]))

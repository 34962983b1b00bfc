"""Two runs on one output folder: while a run is alive, a second one refuses at start (with --overwrite
it would delete the live run's files, with --resume write into them); once the first is killed, its lock
is recognized as stale and taken over with a message."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from rklu.training import finetune
from rklu.training.run_lock import LOCK_NAME, RunLocked, acquire, read_lock, release

TINY = dict(preset="tiny-cpu", data="tofu:full[3992:]", tiny_vocab_size=300, tiny_hidden_size=32, tiny_layers=2,
            tiny_heads=2, tiny_intermediate_size=64, max_length=96, batch_size=4, progress=False, epochs=1)
LONG_ARGV = ["finetune", "--preset", "tiny-cpu", "--data", "tofu:full[3992:]", "--tiny-vocab-size", "300",
             "--tiny-hidden-size", "32", "--tiny-layers", "2", "--tiny-heads", "2", "--tiny-intermediate-size", "64",
             "--max-length", "96", "--batch-size", "4", "--no-progress", "--epochs", "10000"]


def test_second_run_refuses_while_the_first_lives_then_takes_over_its_stale_lock(tmp_path, capfd):
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "rklu.cli", *LONG_ARGV, "--output-dir", str(out)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 180
        while not (out / "run.json").is_file():
            assert first.poll() is None, first.communicate()[1][-3000:]
            assert time.time() < deadline
            time.sleep(0.1)
        lock = read_lock(out)
        assert lock["pid"] == first.pid and lock["host"] == socket.gethostname() and lock["time"] > 0
        before = sorted(p.name for p in out.iterdir())
        for extra in ({"overwrite": True}, {"resume": True}, {}):
            with pytest.raises(RunLocked) as info:
                finetune(output_dir=str(out), **TINY, **extra)
            assert f"in use by another run: pid {first.pid} on {socket.gethostname()}" in str(info.value)
        assert first.poll() is None and (out / "run.json").is_file()  # the live run's folder untouched
        assert set(before) <= {p.name for p in out.iterdir()}
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # the killed run's lock is stale: the next run takes it over, says so, and releases it when done
    assert read_lock(out)["pid"] == first.pid
    capfd.readouterr()
    finetune(output_dir=str(out), overwrite=True, **TINY)
    err = capfd.readouterr().err
    assert f"taking over the lock of {out}: pid {first.pid}" in err and "is gone" in err
    assert json.loads((out / "run.json").read_text())["status"] == "completed"
    assert not (out / LOCK_NAME).exists()


def test_lock_is_exclusive_and_names_its_holder(tmp_path):
    """Two processes taking the lock at once: O_EXCL lets one win; the other is refused with pid/host/time."""
    script = ("import sys, time; from rklu.training.run_lock import acquire; acquire(sys.argv[1]); "
              "print('locked', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLocked, match=rf"pid {holder.pid} on .* \(since \d{{4}}-"):
            acquire(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    acquire(tmp_path)  # stale now
    assert read_lock(tmp_path)["pid"] == os.getpid()
    release(tmp_path)
    assert read_lock(tmp_path) is None

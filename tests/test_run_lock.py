"""One run per output folder (pfc_mx.train.run_lock): a live holder refuses a second job, a stale one is taken over."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from pfc_mx.train.processes import pid_namespace, proc_stat
from pfc_mx.train.run_lock import LOCK_NAME, RunLock, RunLockedError
from tests.ranks import ROOT, kill_tree, rank_pids, spawn


def dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def holder(**changes) -> dict:
    me = {"host": socket.gethostname(), "pid_ns": pid_namespace(), "pid": os.getpid(),
          "start_ticks": proc_stat(os.getpid())[2], "started": "2026-01-01 00:00:00 UTC"}
    return {**me, **changes}


def test_a_live_holder_refuses_a_second_lock_naming_itself(tmp_path):
    with RunLock(tmp_path):
        written = json.loads((tmp_path / LOCK_NAME).read_text())
        assert written["pid"] == os.getpid() and written["host"] == socket.gethostname()
        with pytest.raises(RunLockedError, match=rf"in use by another run \(pid {os.getpid()} on "
                                                 rf"{socket.gethostname()}, started "):
            RunLock(tmp_path).acquire()
    assert not (tmp_path / LOCK_NAME).exists()  # released


@pytest.mark.parametrize("stale, why", [
    (dict(pid=None), "its process is gone"),
    (dict(start_ticks=1), "its process is gone"),  # the pid names another process now
])
def test_a_lock_whose_process_is_gone_on_this_host_is_taken_over(tmp_path, stale, why):
    old = holder(**{k: (dead_pid() if v is None else v) for k, v in stale.items()})
    (tmp_path / LOCK_NAME).write_text(json.dumps(old))
    with RunLock(tmp_path) as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    assert lock.took_over.startswith(f"took over the stale lock of {tmp_path} (pid {old['pid']} on {old['host']}")
    assert lock.took_over.endswith(why)


def test_a_lock_of_another_host_is_stale_only_once_it_stops_being_refreshed(tmp_path):
    path = tmp_path / LOCK_NAME
    path.write_text(json.dumps(holder(host="elsewhere", pid=1)))
    with pytest.raises(RunLockedError, match="pid 1 on elsewhere"):
        RunLock(tmp_path, stale_s=60).acquire()
    os.utime(path, (time.time() - 120, time.time() - 120))
    with RunLock(tmp_path, stale_s=60) as lock:
        pass
    assert lock.took_over.endswith("not refreshed for 120 s")


def test_an_unreadable_lock_counts_as_stale_only_when_old(tmp_path):
    path = tmp_path / LOCK_NAME
    path.write_text("")  # a job between creating the file and writing its owner
    with pytest.raises(RunLockedError):
        RunLock(tmp_path, stale_s=60).acquire()
    os.utime(path, (time.time() - 120, time.time() - 120))
    RunLock(tmp_path, stale_s=60).acquire().release()


def test_the_holder_refreshes_the_lock_and_release_keeps_a_lock_that_is_not_its_own(tmp_path):
    lock = RunLock(tmp_path, beat_s=0.05).acquire()
    os.utime(lock.path, (time.time() - 500, time.time() - 500))
    time.sleep(0.3)
    assert time.time() - lock.path.stat().st_mtime < 5
    lock.path.write_text(json.dumps(holder(pid=12345)))  # somebody else's now
    lock.release()
    assert lock.path.exists()


@pytest.mark.dist
def test_a_second_job_on_the_folder_exits_2_naming_the_holder_and_a_killed_job_is_taken_over(tmp_path):
    from pfc_mx.data.synthetic import generate
    data, out = tmp_path / "data", tmp_path / "run"
    generate(data, num_identities=12, images_per_identity=6, seed=0)
    train = [sys.executable, str(ROOT / "train_horovod.py"), str(ROOT / "configs" / "demo.yaml"), "--set",
             f"data.rec={data}", f"output.dir={out}", "data.batch_size=8", "data.num_workers=0",
             "output.log_every=1", "eval.targets=[]", "output.tensorboard=false"]
    first = spawn(train + ["optim.max_steps=400"], tmp_path / "first.log")
    try:
        ranks = rank_pids(first)
        log = out / "logs" / "rank0.log"
        deadline = time.time() + 120
        while not (log.exists() and "step 1/" in log.read_text()) and time.time() < deadline:
            time.sleep(0.1)
        t0 = time.time()
        second = subprocess.run(train + ["optim.max_steps=400", "seed=1"], cwd=ROOT, capture_output=True,
                                text=True, timeout=120)
        assert second.returncode == 2 and time.time() - t0 < 60
        errors = second.stderr.strip().splitlines()
        assert len(errors) == 1 and errors[0].startswith("error: ")
        assert f"is in use by another run (pid {ranks[0]} on {socket.gethostname()}, started " in errors[0]
        first_log = log.read_text()  # the second job wrote nothing into the first one's log, its error neither
        assert "on 1 rank(s)" not in first_log and "in use by another run" not in first_log
    finally:
        kill_tree(first)  # SIGKILL: the lock stays behind, naming a process that is gone
    assert json.loads((out / LOCK_NAME).read_text())["pid"] == ranks[0]
    third = subprocess.run(train + ["optim.max_steps=2"], cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
    assert third.returncode == 0, third.stderr[-2000:]
    assert f"took over the stale lock of {out} (pid {ranks[0]} on" in (out / "logs" / "rank0.log").read_text()
    assert not (out / LOCK_NAME).exists()

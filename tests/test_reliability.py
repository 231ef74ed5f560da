"""Faults injected for real: preemption, lost ranks, damaged checkpoints, a full disk, bad data, NaNs.

Each test proves a row of docs/reliability.md. The `dist` ones run train_horovod.py on 2 CPU ranks
under horovodrun on a small synthetic dataset; every rank's exit code is recorded
(tests.ranks.recording_exit_codes), and an uninterrupted run of the same config (`reference`)
shows that a resumed run repeats and skips no step: its losses after the resume point are the
reference's, which holds only when the weights, the optimizer state, the data position and the
sampling stream all continue exactly where the checkpoint left them.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import psutil
import pytest

from pfc_mx import checkpoint
from pfc_mx.data import RecordDataset
from pfc_mx.errors import ConfigError
from pfc_mx.train import faults, injection, processes, rank_monitor
from tests.ranks import (ROOT, TRAIN, exit_codes, finish, horovodrun_command, kill_tree, launch, rank_env, rank_pids,
                         recording_exit_codes, spawn, synthetic)

STEPS = 8  # 2 epochs of 4 steps (72 images, 2 ranks x batch 8)
PREEMPTED, LOST, USER_ERROR = faults.EXIT_PREEMPTED, faults.EXIT_RANK_LOST, 2


# ---------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return synthetic(tmp_path_factory, num_identities=12, images_per_identity=6)


def overrides(data: Path, out: Path, *extra: str) -> List[str]:
    return ["--set", f"data.rec={data}", f"output.dir={out}", "data.batch_size=8", "data.num_workers=0",
            f"optim.max_steps={STEPS}", "output.checkpoint_every=2", "output.log_every=1", "eval.every=0",
            "eval.targets=[]", "output.tensorboard=false", *extra]


def metrics(out: Path) -> List[dict]:
    """metrics.jsonl of a run (a line being written is left out)."""
    path = out / "metrics.jsonl"
    records = []
    for line in (path.read_text().splitlines() if path.exists() else []):
        try:
            records.append(json.loads(line))
        except ValueError:
            pass
    return records


def losses(out: Path) -> Dict[int, float]:
    return {r["step"]: r["loss"] for r in metrics(out) if "loss" in r}


def latest(out: Path) -> str:
    return (out / "checkpoints" / "latest").read_text().strip()


def step_folders(out: Path) -> List[str]:
    return sorted(p.name for p in (out / "checkpoints").iterdir() if p.name != "latest")


def logged_steps(stdout: str) -> List[int]:
    """The steps a run printed (`step 5/8 ...`), in order."""
    return [int(s) for s in re.findall(rf"INFO step (\d+)/{STEPS} ", stdout)]


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> Path:
    """An uninterrupted run of STEPS steps, checkpoints every 2 (keep 2)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    launch(TRAIN + overrides(data, out), timeout=300)
    assert sorted(losses(out)) == list(range(1, STEPS + 1))
    return out


def assert_continues_reference(out: Path, reference: Path, resumed_at: int) -> None:
    """Steps 1..STEPS each logged once; from resumed_at + 1 on, the reference's losses."""
    got, want = losses(out), losses(reference)
    assert sorted(got) == list(range(1, STEPS + 1))
    after = range(resumed_at + 1, STEPS + 1)
    np.testing.assert_allclose([got[s] for s in after], [want[s] for s in after], rtol=1e-5, atol=1e-6)


class Job:
    """train_horovod.py on 2 ranks in the background, output.dir <tmp>/run; its output in run.log,
    each rank's exit code in run-exit/."""

    def __init__(self, tmp: Path, data: Path, extra: List[str], env: Optional[Dict[str, str]] = None,
                 record: bool = True) -> None:
        self.out, self.log, self.codes = tmp / "run", tmp / "run.log", tmp / "run-exit"
        args = TRAIN + overrides(data, self.out, *extra)
        self.proc = spawn(recording_exit_codes(args, self.codes) if record else args, self.log, env=env)

    def output(self) -> str:
        return self.log.read_text()

    def wait_until(self, condition: Callable[[], bool], what: str, timeout: float = 240) -> None:
        deadline = time.time() + timeout
        while not condition():
            if time.time() > deadline or self.proc.poll() is not None:
                raise AssertionError(f"never saw {what} (job ended: {self.proc.poll() is not None})\n"
                                     f"{self.output()[-4000:]}")
            time.sleep(0.05)

    def finish(self, timeout: float = 120) -> Dict[int, int]:
        """Wait for the end; {rank: exit code}."""
        finish(self.proc, timeout)
        return exit_codes(self.codes)


@pytest.fixture
def jobs(tmp_path):
    """Job factory; whatever a test leaves running is killed."""
    started: List[Job] = []

    def start(data: Path, *extra: str, env: Optional[Dict[str, str]] = None, record: bool = True) -> Job:
        started.append(Job(tmp_path, data, list(extra), env, record))
        return started[-1]

    yield start
    for job in started:
        kill_tree(job.proc)


# ---------------------------------------------------------------- 1. preemption
@pytest.mark.dist
@pytest.mark.parametrize("sig, target", [("SIGTERM", 1), ("SIGINT", "horovodrun")])
def test_stop_signal_saves_at_the_step_boundary_and_resume_repeats_and_skips_nothing(
        data, reference, jobs, sig, target):
    # horovodrun passes a SIGINT/SIGTERM on to every rank as SIGTERM (recording_exit_codes would hold it back)
    launcher = target == "horovodrun"
    job = jobs(data, "output.checkpoint_every=100", record=not launcher)  # only the preemption saves
    pids = rank_pids(job.proc)
    job.wait_until(lambda: len(losses(job.out)) >= 2, "step 2")
    os.kill(job.proc.pid if launcher else pids[target], getattr(signal, sig))
    codes = job.finish()
    if launcher:  # horovodrun prints the codes of the ranks that ended before it stopped waiting
        codes = {int(r): int(c) for r, c in re.findall(r"Process (\d) exit with status code (\d+)", job.output())}
        # 143 only from horovodrun's own race: right after a rank exits, its helper may stop and terminate
        # the shell that still waits for the rank (docs/reliability.md); the rank's log shows it left with 75
        assert set(codes.values()) <= {PREEMPTED, 143}, job.output()[-3000:]
        for r, code in codes.items():
            log = (job.out / "logs" / f"rank{r}.log").read_text()
            assert code == PREEMPTED or f"rank {r} stops after the preemption checkpoint (exit code {PREEMPTED})" in log
    else:
        assert codes == {0: PREEMPTED, 1: PREEMPTED}
    done = losses(job.out)
    stopped = max(done)
    assert 2 <= stopped < STEPS and sorted(done) == list(range(1, stopped + 1))
    assert latest(job.out) == f"step-{stopped:08d}" and step_folders(job.out) == [f"step-{stopped:08d}"]
    state = checkpoint.check_integrity(job.out / "checkpoints" / latest(job.out))
    assert (state["step"], state["epoch"], state["step_in_epoch"]) == (stopped, stopped // 4, stopped % 4)
    agreed = re.search(rf"preempted after step {stopped}: a stop signal reached rank\(s\) ([01, ]+); .* "
                       rf"exit code {PREEMPTED}", (job.out / "logs" / "rank0.log").read_text())
    assert agreed, (job.out / "logs" / "rank0.log").read_text()[-2000:]
    signalled = [int(r) for r in agreed.group(1).split(", ")]
    # horovodrun signals every rank, but one may get it after the ranks agreed at a step boundary
    assert signalled in (([0], [1], [0, 1]) if launcher else ([target],))
    for r in (0, 1):
        log = (job.out / "logs" / f"rank{r}.log").read_text()
        assert agreed.group(0) in log, log[-2000:]
        assert (f"rank {r} received SIGTERM" in log) == (r in signalled)
        assert f"rank {r} stops after the preemption checkpoint (exit code {PREEMPTED})" in log
    summary = json.loads(job.output().split("summary: ", 1)[1].splitlines()[0])
    assert summary["preempted"] is True and summary["steps"] == stopped
    if launcher:  # the same path from here on: spare the suite a launch
        return
    resumed = launch(TRAIN + overrides(data, job.out, "output.checkpoint_every=100"), timeout=300)
    assert f"resumed from {job.out / 'checkpoints' / f'step-{stopped:08d}'} at step {stopped}" in resumed.stdout
    assert logged_steps(resumed.stdout) == list(range(stopped + 1, STEPS + 1))
    assert [losses(job.out)[s] for s in range(1, stopped + 1)] == [done[s] for s in range(1, stopped + 1)]
    assert_continues_reference(job.out, reference, stopped)


def test_stop_signals_only_record_and_restore_the_handlers():
    before = signal.getsignal(signal.SIGTERM)
    with faults.StopSignals() as signals:
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.time() + 10
        while signals.received is None and time.time() < deadline:
            time.sleep(0.01)
        assert signals.received == "SIGTERM"
        os.kill(os.getpid(), signal.SIGINT)  # no KeyboardInterrupt inside the block
        time.sleep(0.05)
        assert signals.received == "SIGINT"
    assert signal.getsignal(signal.SIGTERM) is before
    with faults.StopSignals() as signals:
        signals.hold()
        # at once, not only after the block: a launcher's follow-up SIGTERM while the rank closes down
        # must not reach the handler (which would take the ended launcher for a hard stop: exit 143)
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN == signal.getsignal(signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        assert signals.received is None
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN == signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGTERM, before)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def test_launchers_are_the_chain_up_to_horovodrun_and_nothing_above(tmp_path):
    """A hard stop watches the processes between a rank and its horovodrun only: not a login shell
    above it, and nothing at all without horovodrun (where the pytest process has none)."""
    assert processes.launchers() == []
    fake = tmp_path / "horovodrun"  # a stand-in launcher: python running a script named horovodrun
    fake.write_text("import subprocess, sys\n"
                    "subprocess.run(['/bin/sh', '-c', sys.executable + ' -c \"import time; time.sleep(60)\"; true'])\n")
    launcher = subprocess.Popen([sys.executable, str(fake)])
    try:
        deadline, leaf = time.time() + 20, None
        while leaf is None and time.time() < deadline:
            below = []
            for p in psutil.Process(launcher.pid).children(recursive=True):
                try:
                    if p.cmdline()[:2] == [sys.executable, "-c"]:
                        below.append(p)
                except psutil.Error:  # a process that is just starting or ending
                    pass
            leaf = below[0].pid if below else None
            time.sleep(0.05)
        chain = processes.launchers(leaf)
        assert [pid for pid, _ in chain][-1] == launcher.pid and len(chain) == 2  # the shell, then horovodrun
        assert not processes.any_gone(chain)
    finally:
        launcher.kill()
        launcher.wait()
    assert processes.any_gone(chain)  # the launcher is gone


def test_a_helper_gone_under_a_live_horovodrun_is_a_normal_stop_and_a_gone_horovodrun_a_hard_one(monkeypatch):
    """When horovodrun stops a job itself it signals its helpers and the ranks together: a helper that
    ended first must not turn the preemption into a kill (seen in CI as exit 143 instead of 75)."""
    killed = []
    monkeypatch.setattr(faults.os, "kill", lambda pid, sig: killed.append(sig))
    before = signal.getsignal(signal.SIGTERM)
    helper = subprocess.Popen([sys.executable, "-c", "pass"])
    ticks = processes.proc_stat(helper.pid)[2]
    helper.wait()
    alive = (os.getpid(), processes.proc_stat(os.getpid())[2])
    try:
        signals = faults.StopSignals()
        signals._launchers = [(helper.pid, ticks), alive]  # the chain ends with horovodrun: here alive
        signals._handle(signal.SIGTERM, None)
        assert signals.received == "SIGTERM" and killed == []
        signals._launchers = [alive, (helper.pid, ticks)]  # horovodrun gone: the default action, at once
        signals._handle(signal.SIGTERM, None)
        assert killed == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, before)


def test_any_gone_sees_exit_zombie_and_pid_reuse():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    state, ppid, ticks = processes.proc_stat(child.pid)
    assert ppid == os.getpid() and state != "Z"
    assert not processes.any_gone([(child.pid, ticks)])
    assert processes.any_gone([(child.pid, ticks + 1)])  # same pid, another start: another process
    child.kill()
    deadline = time.time() + 10
    while processes.proc_stat(child.pid)[0] != "Z" and time.time() < deadline:
        time.sleep(0.01)
    assert processes.any_gone([(child.pid, ticks)])  # a zombie, not reaped yet
    child.wait()
    assert processes.proc_stat(child.pid) is None and processes.any_gone([(child.pid, ticks)])


# ---------------------------------------------------------------- 2. a lost rank
@pytest.mark.dist
@pytest.mark.parametrize("sig, victim, why", [
    ("SIGKILL", 1, "its process is gone"),
    ("SIGKILL", 0, "its process is gone"),
    ("SIGSTOP", 1, "no heartbeat"),  # frozen: the collective times out (HOROVOD_GLOO_TIMEOUT_SECONDS)
])
def test_lost_rank_ends_the_others_within_60_s_naming_it(data, jobs, sig, victim, why):
    job = jobs(data, env={"HOROVOD_GLOO_TIMEOUT_SECONDS": "10"})
    pids = rank_pids(job.proc)
    job.wait_until(lambda: len(losses(job.out)) >= 3, "step 3")
    os.kill(pids[victim], getattr(signal, sig))
    hit = time.time()
    survivor = 1 - victim
    job.wait_until(lambda: survivor in exit_codes(job.codes), f"rank {survivor} exit", timeout=60)
    took = time.time() - hit
    codes = job.finish()
    assert codes[survivor] == LOST and codes.get(victim, 137) == 137, codes  # SIGSTOPped: killed by horovodrun
    assert took < 60
    message = f"rank {victim} (pid {pids[victim]} on "
    log = (job.out / "logs" / f"rank{survivor}.log").read_text()
    assert message in log and f"is lost: {why}" in log and f"Rank {survivor} stops with exit code {LOST}" in log
    assert f"[{survivor}]<stderr>:error: {message}" in job.output()
    saved = latest(job.out)
    state = checkpoint.check_integrity(job.out / "checkpoints" / saved)
    assert state["step"] >= 2 and f"step-{state['step']:08d}" == saved
    print(f"{sig} rank {victim}: rank {survivor} exited {LOST} after {took:.1f} s")


def _peer(pid: int) -> tuple:
    """A RankMonitor peer entry for process pid on this host."""
    return (socket.gethostname(), processes.pid_namespace(), pid)


def test_rank_monitor_names_a_dead_peer_and_exits_even_without_a_collective(tmp_path, monkeypatch):
    exited: List[int] = []

    def fake_exit(code: int) -> None:  # os._exit would end pytest; stop the thread instead
        exited.append(code)
        monitor.stop()

    monkeypatch.setattr(rank_monitor, "_exit", fake_exit)
    peer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    monitor = rank_monitor.RankMonitor(tmp_path, interval_s=0.05, orphan_timeout_s=0.3,
                                 peers=[_peer(os.getpid()), _peer(peer.pid)], rank=0).start()
    try:
        time.sleep(0.5)
        assert exited == []
        peer.kill()
        peer.wait()
        deadline = time.time() + 30
        while not exited and time.time() < deadline:
            time.sleep(0.01)
        assert exited == [LOST], "the monitor never ended the orphaned rank"
    finally:
        monitor.stop()
        peer.kill()
    assert monitor.lost_ranks() == {1: "its process is gone (exited or killed)"}


def test_a_peer_that_dies_while_the_monitor_waits_is_named_as_gone(tmp_path):
    """A killed rank's sockets close before the kernel has turned it into a zombie: the first look
    at the process table may still see it running, so the monitor looks again after its wait."""
    peer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    monitor = rank_monitor.RankMonitor(tmp_path, peers=[_peer(os.getpid()), _peer(peer.pid)], rank=0)
    killer = threading.Timer(0.1, peer.kill)
    killer.start()
    try:
        assert monitor.lost_ranks(wait_s=1.0) == {1: "its process is gone (exited or killed)"}
    finally:
        killer.join()
        peer.wait()


@pytest.mark.parametrize("message, lost", [
    ("Traceback (most recent call last):\n  File \"Read error [127.0.0.1]\", line 28038\n"
     "MXNetError: Connection reset by peer", True),  # Gloo saw the peer's socket close (seen in a real run)
    ("Horovod has been shut down. This was caused by an exception on one of the ranks", True),
    ("Check failed: shape mismatch (4, 3) vs (4, 5)", False),  # a bug, not a lost peer: keeps its traceback
])
def test_peer_lost_recognises_failed_collectives_only(monkeypatch, message, lost):
    import mxnet as mx
    monkeypatch.setattr(faults.dist, "size", lambda: 2)
    assert faults.peer_lost(mx.base.MXNetError(message)) is lost
    monkeypatch.setattr(faults.dist, "size", lambda: 1)
    assert not faults.peer_lost(mx.base.MXNetError(message))


def test_rank_monitor_names_a_peer_whose_heartbeat_stopped(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(rank_monitor, "_exit", lambda code: sys.exit(code))
    (tmp_path / "rank1").write_text("7\n")  # a peer on another host that stopped beating
    monitor = rank_monitor.RankMonitor(tmp_path, interval_s=0.05, peers=[_peer(os.getpid()), ("elsewhere", "", 4242)],
                                 rank=0).start()
    with pytest.raises(SystemExit) as e:
        monitor.fail("a collective failed")
    monitor.stop()
    assert e.value.code == LOST
    err = capsys.readouterr().err
    assert "rank 1 (pid 4242 on elsewhere) is lost: no heartbeat for 0.1 s" in err
    assert "a collective failed. Rank 0 stops with exit code 69" in err


# ---------------------------------------------------------------- 3. damaged and interrupted checkpoints
@pytest.mark.dist
def test_kill_during_save_and_a_damaged_newest_checkpoint_fall_back_to_the_previous(data, reference, jobs):
    job = jobs(data, env={checkpoint.INJECT_SAVE_STALL: "6"})
    pids = rank_pids(job.proc)
    ranks_stalled = lambda: all("stalling inside the save" in (job.out / "logs" / f"rank{r}.log").read_text()
                                for r in (0, 1) if (job.out / "logs" / f"rank{r}.log").exists())
    job.wait_until(lambda: (job.out / "logs" / "rank1.log").exists() and ranks_stalled(), "both ranks in save 6")
    for pid in pids.values():
        os.kill(pid, signal.SIGKILL)
    job.finish()
    ck = job.out / "checkpoints"
    assert latest(job.out) == "step-00000004"  # the interrupted save never became latest
    assert step_folders(job.out) == [".step-00000006.tmp", "step-00000002", "step-00000004"]
    assert not (ck / ".step-00000006.tmp" / "state.json").exists()
    damaged = ck / "step-00000004" / checkpoint.TRAINER_STATES
    damaged.write_bytes(damaged.read_bytes()[:1000])  # truncated

    resumed = launch(TRAIN + overrides(data, job.out), timeout=300).stdout
    assert f"removed {ck / '.step-00000006.tmp'}: a checkpoint interrupted while being written" in resumed
    assert f"{ck / 'step-00000004'}: checksum mismatch in {checkpoint.TRAINER_STATES} (file damaged)" in resumed
    assert "falling back to step-00000002: newer checkpoint(s) step-00000004 did not verify" in resumed
    assert f"resumed from {ck / 'step-00000002'} at step 2" in resumed
    assert logged_steps(resumed) == list(range(3, STEPS + 1))
    assert_continues_reference(job.out, reference, 2)
    assert latest(job.out) == f"step-{STEPS:08d}" and checkpoint.check_integrity(ck / latest(job.out))["step"] == STEPS
    assert f"moved {ck / 'step-00000004'} to {ck / 'set-aside' / 'step-00000004'}" in resumed  # kept, never used
    assert (ck / "set-aside" / "step-00000004" / checkpoint.TRAINER_STATES).stat().st_size == 1000


def test_a_fresh_start_in_a_used_output_folder_sets_the_old_checkpoints_aside(data, tmp_path):
    """resume: none (or an older checkpoint) in a folder holding newer checkpoints: they are moved to
    checkpoints/set-aside/, so pruning keeps the new run's checkpoints and `auto` continues the new run."""
    out, ck = tmp_path / "run", tmp_path / "run" / "checkpoints"

    def train(*extra: str) -> str:
        r = subprocess.run(TRAIN + overrides(data, out, "output.keep=1", *extra), cwd=ROOT, capture_output=True,
                           text=True, timeout=300, env=rank_env())
        assert r.returncode == 0, r.stderr[-3000:]
        return r.stdout + r.stderr

    train("optim.max_steps=6")
    fresh = train("optim.max_steps=4", "output.resume=none")
    assert f"moved {ck / 'step-00000006'} to {ck / 'set-aside' / 'step-00000006'}" in fresh
    assert step_folders(out) == ["set-aside", "step-00000004"] and latest(out) == "step-00000004"
    assert checkpoint.check_integrity(ck / "set-aside" / "step-00000006")["step"] == 6
    continued = train("optim.max_steps=6", "output.allow_changes=true")  # a longer run than step 4's config
    assert f"resumed from {ck / 'step-00000004'} at step 4" in continued
    assert step_folders(out) == ["set-aside", "step-00000006"]


# ---------------------------------------------------------------- 4. full disk during a save
def _can_mount_tmpfs() -> bool:
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                            "mount -t tmpfs -o size=64k probe /mnt"], capture_output=True)
    return probe.returncode == 0


_FULL_DISK = '''
mount -t tmpfs -o size="$2"k pfc-full "$1" || exit 99
"${@:4}"
code=$?
cp -a "$1/." "$3/"
exit $code
'''


@pytest.mark.dist
def test_full_disk_during_a_save_stops_every_rank_and_keeps_the_previous_checkpoint(data, reference, tmp_path):
    if shutil.which("unshare") is None or not _can_mount_tmpfs():
        pytest.skip("needs `unshare --user --mount` to mount a small tmpfs as the checkpoint folder")
    # a tmpfs that holds one checkpoint (step 2) and a quarter of the next (step 4 cannot be written)
    one = sum(-(-p.stat().st_size // 4096) * 4 for p in (reference / "checkpoints" / "step-00000008").iterdir())
    out, after, codes = tmp_path / "run", tmp_path / "after", tmp_path / "exit"
    (out / "checkpoints").mkdir(parents=True)
    after.mkdir()
    ranks = horovodrun_command(recording_exit_codes(TRAIN + overrides(data, out, "optim.max_steps=4"), codes))
    cmd = ["unshare", "--user", "--map-root-user", "--mount", "bash", "-c", _FULL_DISK, "full-disk",
           str(out / "checkpoints"), str(one + one // 4 + 8), str(after), *ranks]
    with open(tmp_path / "run.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=rank_env(), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    finish(proc, 300)
    output = (tmp_path / "run.log").read_text()
    assert exit_codes(codes) == {0: USER_ERROR, 1: USER_ERROR}, output[-3000:]
    errors = re.findall(r"\[(\d)\]<stderr>:error: (.*)", output)
    assert {r for r, _ in errors} == {"0", "1"}
    for _, line in errors:  # the same line on every rank
        assert re.fullmatch(r"rank [01] could not write checkpoint step-00000004: .*; 0\.\d MiB free in "
                            rf"{re.escape(str(out / 'checkpoints'))} \(the previous checkpoint is intact\)", line), line
    assert sorted(p.name for p in after.iterdir()) == ["latest", "step-00000002"]  # no half-written folder
    assert (after / "latest").read_text().strip() == "step-00000002"
    assert checkpoint.check_integrity(after / "step-00000002")["step"] == 2
    assert sorted(losses(out)) == [1, 2, 3, 4]


# ---------------------------------------------------------------- 5. data faults
def _corrupt_jpegs(folder: Path, images: List[int]) -> List[int]:
    """Overwrite the JPEG start marker of those images in place (same length); returns their record keys."""
    ds = RecordDataset(folder)
    offsets = dict(tuple(map(int, line.split("\t"))) for line in (folder / "train.idx").read_text().splitlines())
    with open(folder / "train.rec", "r+b") as f:
        for i in images:
            f.seek(offsets[int(ds.keys[i])])
            head = f.read(200)
            f.seek(offsets[int(ds.keys[i])] + head.index(b"\xff\xd8\xff"))
            f.write(b"\0\0\0")
    return [int(ds.keys[i]) for i in images]


@pytest.fixture(scope="module")
def hundred_images(tmp_path_factory) -> Path:
    from pfc_mx.data.synthetic import generate
    root = tmp_path_factory.mktemp("hundred")
    generate(root, num_identities=20, images_per_identity=5, seed=1)
    return root


@pytest.mark.dist
def test_one_percent_corrupt_jpegs_train_to_the_end_and_are_counted(hundred_images, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(hundred_images, data)
    [key] = _corrupt_jpegs(data, [37])
    out = tmp_path / "run"
    # batch 10: each rank reads 50 of the 100 images per epoch; the default max_corrupt_fraction 0.02 allows 1
    proc = launch(TRAIN + overrides(data, out, "data.batch_size=10", "optim.max_steps=5"), timeout=300)
    summary = json.loads(proc.stdout.split("summary: ", 1)[1].splitlines()[0])
    assert summary["steps"] == 5 and summary["corrupt_images"] == 1
    assert f"skipped 1 corrupt image(s) of {data / 'train.rec'} (records {key})" in proc.stdout
    state = checkpoint.check_integrity(out / "checkpoints" / "step-00000005")
    assert (state["corrupt_images"], state["corrupt_records"], state["corrupt_in_epoch"]) == (1, [37], [])
    # the count survives a resume (image 37 is not read again in step 6)
    proc = launch(TRAIN + overrides(data, out, "data.batch_size=10", "optim.max_steps=6", "output.allow_changes=true"),
                  timeout=300)
    assert json.loads(proc.stdout.split("summary: ", 1)[1].splitlines()[0])["corrupt_images"] == 1
    assert "skipping corrupt record" not in proc.stdout


@pytest.mark.dist
def test_twenty_percent_corrupt_jpegs_stop_every_rank_with_one_line(hundred_images, tmp_path, jobs):
    data = tmp_path / "data"
    shutil.copytree(hundred_images, data)
    _corrupt_jpegs(data, list(range(0, 100, 5)))
    job = jobs(data, "data.batch_size=10", "data.max_corrupt_fraction=0.1")
    assert job.finish(300) == {0: USER_ERROR, 1: USER_ERROR}
    errors = re.findall(r"\[(\d)\]<stderr>:error: (.*)", job.output())
    assert {r for r, _ in errors} == {"0", "1"}
    for _, line in errors:
        found = re.fullmatch(rf"(rank [01]: )?{re.escape(str(data / 'train.rec'))}: (\d+) corrupt records exceed "
                             r"max_corrupt_fraction 0.1 of the 50 images this rank reads per epoch "
                             r"\(first: record \d+\)", line)
        assert found and int(found.group(2)) > 5, line
    for rank, line in errors:  # each rank's reason is in its own log too
        assert f"error: {line}" in (job.out / "logs" / f"rank{rank}.log").read_text()
    assert max(losses(job.out) or [0]) < 5  # stopped within the first epoch


def _truncate_idx(folder: Path) -> str:
    lines = (folder / "train.idx").read_text().splitlines()
    (folder / "train.idx").write_text("\n".join(lines[:-1]) + "\n")
    return "truncated .idx"


def _remove_idx(folder: Path) -> str:
    (folder / "train.idx").unlink()
    return f"index {folder / 'train.idx'} is missing"


def _label_out_of_range(folder: Path) -> str:
    ds = RecordDataset(folder)
    offsets = dict(tuple(map(int, line.split("\t"))) for line in (folder / "train.idx").read_text().splitlines())
    key = int(ds.keys[40])
    with open(folder / "train.rec", "r+b") as f:
        f.seek(offsets[key] + 8 + 4)  # record header, then the image header's flag; the label follows
        f.write(np.float32(ds.num_classes).tobytes())
    # the labels come from the identity records; the sampled headers (here: all) show the damaged one
    return f"image record {key} has class {ds.num_classes} in its header, but identity record"


@pytest.mark.parametrize("damage", [_truncate_idx, _remove_idx, _label_out_of_range])
def test_broken_index_or_label_stops_before_training_naming_it(data, tmp_path, damage):
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    expected = damage(copy)
    out = tmp_path / "run"
    r = subprocess.run(TRAIN + overrides(copy, out), cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env=rank_env())
    assert r.returncode == USER_ERROR and "Traceback" not in r.stderr, r.stderr[-2000:]
    [line] = [x for x in r.stderr.splitlines() if x.startswith("error: ")]
    assert expected in line
    assert losses(out) == {}  # before the first step


# ---------------------------------------------------------------- 6. numerical faults
@pytest.mark.dist
def test_nonfinite_steps_are_skipped_up_to_the_budget_then_stop_keeping_the_last_good_checkpoint(data, jobs):
    job = jobs(data, "optim.skip_nonfinite=2", env={injection.INJECT_NONFINITE: "3:loss,5:grad,6:loss"})
    assert job.finish(300) == {0: USER_ERROR, 1: USER_ERROR}
    message = ("non-finite loss (nan) at step 6 after 2 skipped (optim.skip_nonfinite 2, steps 3, 5); "
               "the last good checkpoint step-00000004 is kept")
    assert f"[0]<stderr>:error: {message}" in job.output() and f"[1]<stderr>:error: {message}" in job.output()
    records = metrics(job.out)
    assert sorted(losses(job.out)) == [1, 2, 4]
    assert [(r["step"], r["skipped"], r["skipped_total"]) for r in records if "skipped" in r] == [
        (3, "non-finite loss (nan)", 1), (5, "non-finite backbone gradient", 2)]
    assert latest(job.out) == "step-00000004" and step_folders(job.out) == ["step-00000002", "step-00000004"]
    state = checkpoint.check_integrity(job.out / "checkpoints" / "step-00000004")
    assert state["nonfinite_steps"] == [3] and np.isfinite(state["loss"])


def test_nonfinite_gradient_stops_at_once_by_default(data, tmp_path):
    out = tmp_path / "run"
    r = subprocess.run(TRAIN + overrides(data, out, "optim.max_steps=4", "output.checkpoint_every=1"), cwd=ROOT,
                       capture_output=True, text=True, timeout=300,
                       env=rank_env({injection.INJECT_NONFINITE: "3:grad"}))
    assert r.returncode == USER_ERROR and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1] == ("error: non-finite backbone gradient at step 3; "
                                                 "the last good checkpoint step-00000002 is kept")
    assert latest(out) == "step-00000002" and sorted(losses(out)) == [1, 2]


def test_injection_spec_is_parsed_or_rejected():
    assert injection.parse_nonfinite("3, 5:grad,7:loss") == {3: "loss", 5: "grad", 7: "loss"}
    assert injection.parse_nonfinite("") == {}
    with pytest.raises(ConfigError, match="expected steps like 3,5:grad"):
        injection.parse_nonfinite("3:weights")
    hooks = injection.Injection.from_env({injection.INJECT_NONFINITE: "3:grad", injection.INJECT_STOP: " 4 "})
    assert (hooks.nonfinite_at(3, last_rank=True), hooks.nonfinite_at(3, last_rank=False)) == ("grad", None)
    assert [hooks.stop_after(n) for n in (3, 4)] == [None, "PFC_MX_INJECT_STOP=4"]
    assert injection.Injection.from_env({}).stop_after(0) is None
    with pytest.raises(ConfigError, match="expected a step number"):
        injection.Injection.from_env({injection.INJECT_STOP: "-1"})

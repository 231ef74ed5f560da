"""tools/bench_scale.py: a small rehearsal prints its table; bad input is one line and exit 2."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def bench(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tools" / "bench_scale.py"), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


def test_a_small_rehearsal_writes_opens_and_loads_side_by_side(tmp_path):
    r = bench("--images", "20000", "--classes", "300", "--skip-train", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [line for line in r.stdout.splitlines() if line.startswith("| ")]
    phases = [row.split(" | ")[0] for row in rows[1:]]  # after the header row
    assert phases[0] == "| write 20,000 images, 300 identities"
    assert [p.split(" (")[0] for p in phases[1:]] == ["| first open, cold, nothing cached", "| open, cold",
                                                       "| open, warm", "| loader, 2 workers"]
    assert "(identity records)" in phases[1] and "FaceImageIter" in rows[2]
    assert (tmp_path / "cache").is_dir() and not list((tmp_path / "data-20000x300-0").glob("*.npy"))


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    for args, words in ((["--rec", str(tmp_path / "nowhere")], "no train.rec"),
                        (["--images", "10"], "--images and --classes go together"),
                        (["--steps", "0"], "--steps")):
        r = bench(*args, "--out", str(tmp_path))
        lines = [x for x in r.stderr.splitlines() if "error" in x]
        assert r.returncode == 2 and len(lines) == 1 and words in lines[0] and "Traceback" not in r.stderr

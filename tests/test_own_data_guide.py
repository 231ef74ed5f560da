"""docs/own-data.md runs as written: every code block of the guide, in order, on a small generated folder.

The guide's commands run from a working folder that links the repository's code (configs/, pfc_mx/,
symbols/, tools/, train_horovod.py), with .venv/bin first on PATH, so `python` and `horovodrun`
are the ones the guide means. The only change: the training command gets `--set` overrides for a
tiny network and a few steps (TRAIN_OVERRIDES), so that the test stays short.
"""
from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import List, Tuple

import cv2
import numpy as np
import pytest

from pfc_mx.data import faces
from tests.ranks import ROOT, rank_env

pytestmark = [pytest.mark.dist, pytest.mark.slow]

GUIDE = ROOT / "docs" / "own-data.md"
TRAIN_OVERRIDES = ("--set model.name=iresnet_demo model.embedding_size=64 data.batch_size=8 data.num_workers=1 "
                   "optim.max_steps=4 optim.warmup_epochs=0 optim.epochs=2 eval.every=0 output.checkpoint_every=4 "
                   "output.log_every=1 output.tensorboard=false")
NAMES = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"]
BLOCK = re.compile(r"^( *)```(bash|python|yaml)\n(.*?)^\1```", re.S | re.M)


def blocks() -> List[Tuple[str, str]]:
    """(language, text) of every fenced block of the guide, in order, dedented."""
    return [(lang, textwrap.dedent(body)) for _, lang, body in BLOCK.findall(GUIDE.read_text())]


def write_folder(work: Path) -> None:
    """faces/<name>/000N.jpg for 8 training identities (6 each), held-out/ identities and pairs.txt,
    and photo.jpg for the alignment step."""
    for c, name in enumerate(NAMES):
        person = faces.identity(np.random.default_rng([1, c]))
        (work / "faces" / name).mkdir(parents=True)
        for j in range(6):
            rgb = faces.render(person, np.random.default_rng([2, c, j]))
            cv2.imwrite(str(work / "faces" / name / f"{j + 1:04d}.jpg"), rgb[:, :, ::-1])
    lines = []
    for p in range(4):
        person = faces.identity(np.random.default_rng([3, p]))
        (work / "held-out" / f"p{p}").mkdir(parents=True)
        for j in range(2):
            rgb = faces.render(person, np.random.default_rng([4, p, j]))
            cv2.imwrite(str(work / "held-out" / f"p{p}" / f"{j}.jpg"), rgb[:, :, ::-1])
        lines.append(f"held-out/p{p}/0.jpg held-out/p{p}/1.jpg 1")
        lines.append(f"held-out/p{p}/0.jpg held-out/p{(p + 1) % 4}/1.jpg 0")
    (work / "pairs.txt").write_text("\n".join(lines) + "\n")
    cv2.imwrite(str(work / "photo.jpg"), np.full((300, 300, 3), 128, np.uint8))


def run(command: str, work: Path, env: dict) -> subprocess.CompletedProcess:
    r = subprocess.run(["bash", "-c", command], cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{command}\n--- stdout ---\n{r.stdout[-4000:]}\n--- stderr ---\n{r.stderr[-4000:]}"
    return r


def test_the_guide_runs_from_an_image_folder_to_an_onnx_model(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    for name in ("configs", "pfc_mx", "symbols", "tools", "train_horovod.py"):
        (work / name).symlink_to(ROOT / name)
    write_folder(work)
    env = rank_env({"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"})
    outputs = {}
    for lang, text in blocks():
        first = text.splitlines()[0]
        if lang == "yaml":
            (work / re.match(r"# file: (\S+)", first).group(1)).write_text(text)
        elif lang == "python":
            script = re.match(r"# (\S+\.py):", first).group(1)
            (work / script).write_text(text)
            outputs[script] = run(f"python {script}", work, env).stdout
        else:
            for line in filter(lambda s: s.strip() and not s.startswith("#"), text.splitlines()):
                if "train_horovod.py" in line:
                    line = f"{line} {TRAIN_OVERRIDES}"
                outputs[line.split(" ", 2)[1] + " " + line.split(" ", 3)[2]] = run(line, work, env).stdout
    said = "\n".join(f"$ {k}\n{v}" for k, v in outputs.items())
    assert cv2.imread(str(work / "aligned.jpg")).shape == (112, 112, 3), said
    assert "wrote " in outputs["tools/rec.py build"] and "48 images, 8 classes, 0 skipped" in said
    assert re.search(r"48 images, 8 classes, 0 damaged, .*: ok\n", outputs["tools/rec.py validate"]), said
    assert "8 pairs (4 same, 4 different)" in outputs["tools/rec.py pairs"]
    train = outputs["-np 2"]
    assert '"steps": 4' in train and '"corrupt_images": 0' in train and '"wrong_size_images": 0' in train, said
    assert (work / "runs" / "my_faces" / "logs" / "rank1.log").is_file()
    accuracy = re.findall(r"^mypairs\s+8\s+([\d.]+)%", said, re.M)
    assert len(accuracy) == 2 and len(set(accuracy)) == 1, said  # steps 7 and 8: MXNet and ONNX agree
    assert (work / "my_faces.onnx").stat().st_size > 0
    assert -1.0 <= float(outputs["embed.py"].strip()) <= 1.0

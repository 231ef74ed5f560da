"""pfc_mx.train.reporting in one process: metrics.jsonl survives a resume and a write cut short."""
from __future__ import annotations

import json
import logging

from pfc_mx.train.reporting import Reporter, read_metrics


def test_resume_drops_later_records_and_lines_cut_short(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "loss": 1.0 / s}) for s in (1, 2, 3, 4)]
    path.write_text("\n".join(lines) + "\n" + '{"step": 5, "lo')  # the disk filled up mid-line
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3, 4]
    with caplog.at_level(logging.WARNING):
        reporter = Reporter(tmp_path, total_steps=8, global_batch=4, start_step=2, tensorboard=False)
    assert "dropped 1 line(s) that do not parse" in caplog.text
    assert path.read_text() == "\n".join(lines[:2]) + "\n"
    reporter.step(3, 0, 0.5, 0.1)
    reporter.close(None)
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3]

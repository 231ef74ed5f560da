"""Training: the loop (loop.py), LR schedules (schedule.py), reports (reporting.py), in-training verification."""
from pfc_mx.train.loop import train

__all__ = ["train"]

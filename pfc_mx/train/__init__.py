"""Training: the job around it (job.py), the step loop (loop.py) and the parts they use (see README's map)."""
from pfc_mx.train.job import train

__all__ = ["train"]

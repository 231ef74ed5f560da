"""The data options' values: one source for the loader and the config (no OpenCV, no MXNet here)."""
from __future__ import annotations

IMAGE_SIZE = 112  # pixels: the training input is IMAGE_SIZE × IMAGE_SIZE × 3 RGB
WRONG_SIZE_POLICIES = ("resize", "skip", "error")  # data.on_wrong_size: resize (counted), skip (counted), stop

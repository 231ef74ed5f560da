"""Imported by pytest before any test module: pfc_mx first, so its OpenBLAS choice precedes mxnet (pfc_mx.blas)."""
import pfc_mx  # noqa: F401
import atexit  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

# datasets the tests make keep their parsed index and labels in a folder of this run, not the user's cache
if "PFC_MX_DATA_CACHE" not in os.environ:
    os.environ["PFC_MX_DATA_CACHE"] = tempfile.mkdtemp(prefix="pfc_mx-data-cache-")
    atexit.register(shutil.rmtree, os.environ["PFC_MX_DATA_CACHE"], True)

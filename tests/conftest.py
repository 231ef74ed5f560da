"""Imported by pytest before any test module: pfc_mx first, so its OpenBLAS choice precedes mxnet (pfc_mx.blas)."""
import pfc_mx  # noqa: F401

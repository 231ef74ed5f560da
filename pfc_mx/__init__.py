"""pfc_mx: Partial FC face-recognition training in MXNet/Gluon, distributed with Horovod.

Importing the package (before mxnet) lets pfc_mx.blas choose OpenBLAS kernels
that fit the CPU: it may set OPENBLAS_CORETYPE in this process's environment.
"""
from pfc_mx import blas as _blas

__version__ = "0.1.0"
_blas.select_core()

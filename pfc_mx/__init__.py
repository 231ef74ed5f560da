"""pfc_mx: Partial FC face-recognition training in MXNet/Gluon, distributed with Horovod."""
__version__ = "0.1.0"

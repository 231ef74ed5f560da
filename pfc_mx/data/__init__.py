"""Data: RecordIO datasets, rank-sharded sampling, the parallel loader, `.bin` sets, synthetic faces."""
from pfc_mx.data.loader import RecordLoader
from pfc_mx.data.recordio import RecordDataset
from pfc_mx.data.sampler import ShardedSampler
from pfc_mx.data.verification_bin import load_bin, write_bin

__all__ = ["RecordDataset", "RecordLoader", "ShardedSampler", "load_bin", "write_bin"]

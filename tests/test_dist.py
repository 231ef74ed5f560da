"""pfc_mx.dist: the size-1 fallback in process, and real collectives on 2 ranks."""
from __future__ import annotations

import mxnet as mx
import numpy as np
import pytest

from pfc_mx import dist
from tests.dist_cases.collectives import rank_values, special_values
from tests.dist_cases.training import reference_sync
from tests.ranks import RanksFailed, launch, run_ranks


def test_single_process_fallback_returns_inputs_unchanged():
    assert not dist.launched_by_horovodrun()
    dist.init()
    assert (dist.rank(), dist.size(), dist.local_rank()) == (0, 1, 0)
    x = mx.nd.array(rank_values(0))
    for out in (dist.allgather(x), dist.allreduce(x, "sum"), dist.allreduce(x, "max"), dist.broadcast(x),
                dist.gather_rows(x), dist.allreduce(x, "sum", inplace=True)):
        np.testing.assert_array_equal(out.asnumpy(), x.asnumpy())
    assert dist.allgather_object({"a": 1}) == [{"a": 1}]
    assert dist.context() == mx.cpu()
    with pytest.raises(ValueError, match="allreduce op"):
        dist.allreduce(x, op="mean")


@pytest.mark.dist
def test_two_ranks_receive_exact_collective_values(tmp_path):
    ranks = run_ranks("collectives", tmp_path)
    a0, a1 = rank_values(0), rank_values(1)
    assert [int(r["_rank"]) for r in ranks] == [0, 1]
    assert all(int(r["_size"]) == 2 for r in ranks)
    for r, res in enumerate(ranks):
        np.testing.assert_array_equal(res["world"], [r, 2, r])
        np.testing.assert_array_equal(res["input"], rank_values(r))
        np.testing.assert_array_equal(res["allgather"], np.concatenate([a0, a1]))
        np.testing.assert_array_equal(res["allgather_ragged"],
                                      np.concatenate([rank_values(0, rows=1), rank_values(1, rows=2)]))
        np.testing.assert_array_equal(res["allgather_int"], [0, 10, 1, 11])
        assert res["allgather_int"].dtype == np.int32
        np.testing.assert_array_equal(res["sum"], a0 + a1)
        np.testing.assert_array_equal(res["max"], np.maximum(a0, a1))
        np.testing.assert_array_equal(res["min"], np.minimum(a0, a1))
        np.testing.assert_array_equal(res["sum_inplace"], a0 + a1)
        assert bool(res["sum_inplace_is_input"])
        np.testing.assert_array_equal(res["gather_rows"], np.concatenate([a0, a1]))
        np.testing.assert_array_equal(res["gather_rows_f16"], np.concatenate([a0, a1]).astype(np.float16))
        assert res["gather_rows_f16"].dtype == np.float16
        # a sum with zeros keeps NaN payloads, subnormals and infinities; only -0.0 becomes +0.0
        exact = special_values().view(np.uint32).copy()
        exact[0] = 0
        np.testing.assert_array_equal(res["gather_rows_bits"], np.concatenate([exact, rank_values(1)[0].view(np.uint32)]))
        np.testing.assert_array_equal(res["grouped_sum"], np.stack([a0 + a1, 2 * (a0 + a1)]))
        np.testing.assert_array_equal(res["grouped_sum_inplace"], np.stack([a0 + a1, 2 * (a0 + a1)]))  # the inputs hold it
        np.testing.assert_array_equal(res["broadcast"], a1)
        np.testing.assert_array_equal(res["broadcast_bits"], special_values().view(np.uint32))  # bit for bit
        np.testing.assert_array_equal(res["broadcast_f16"], a1.astype(np.float16))
        assert res["broadcast_f16"].dtype == np.float16
        np.testing.assert_array_equal(res["broadcast_int64"], [1, -1, 2**40 + 1])
        assert int(res["broadcast_object_from"]) == 1


@pytest.mark.dist
@pytest.mark.parametrize("world", [1, 2])
def test_broadcast_survives_thousands_of_calls(tmp_path, world):
    ranks = run_ranks("broadcast_storm", tmp_path, np_=world, calls=2000)
    assert all(float(r["total"]) == 8 * sum(range(2000)) for r in ranks)


@pytest.mark.dist
def test_hung_rank_fails_after_timeout_instead_of_hanging(tmp_path):
    # rank 1 never reaches the collective: the launcher must kill both and fail fast
    script = tmp_path / "hang.py"
    script.write_text(
        "import time\nfrom pfc_mx import dist\ndist.init()\n"
        "import mxnet as mx\n"
        "if dist.rank() == 0:\n    dist.allreduce(mx.nd.ones((2,))).wait_to_read()\n"
        "else:\n    time.sleep(600)\n")
    import sys
    with pytest.raises(RanksFailed, match="still running after"):
        launch([sys.executable, str(script)], timeout=20)


@pytest.mark.dist
def test_two_ranks_sum_backbone_gradients_and_average_bn_statistics_as_one_process(tmp_path):
    """train/sync.py on 2 ranks equals one process summing the ranks' gradients (then clipping) and
    averaging their batch-norm running statistics."""
    grads, norm, stats = reference_sync(2)
    for res in run_ranks("backbone_sync", tmp_path):
        np.testing.assert_allclose(float(res["norm"]), norm, rtol=1e-6)
        np.testing.assert_allclose(res["grads"], grads, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(res["stats"], stats, rtol=1e-6, atol=1e-7)

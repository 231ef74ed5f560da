"""fn over items in order, in this process or in forked worker processes: the tools' --workers.

    with parallel_map(encode, jobs, workers=4, chunksize=16) as results:
        for out in results:
            ...
"""
from __future__ import annotations

import multiprocessing as mp
import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence


@contextmanager
def parallel_map(fn: Callable[[Any], Any], items: Iterable[Any], workers: int, chunksize: int = 1,
                 initializer: Optional[Callable[..., Any]] = None, initargs: Sequence[Any] = ()) -> Iterator[Iterator]:
    """Yield an iterator of fn(item) in the items' order: in this process when workers <= 1, else from
    a pool of `workers` processes (forked on Linux), waited for when the block ends and stopped at
    once when it raises."""
    if workers <= 1:
        yield map(fn, items)
        return
    ctx = mp.get_context("fork" if sys.platform.startswith("linux") else None)
    with ctx.Pool(workers, initializer, tuple(initargs)) as pool:  # leaving the with terminates the pool
        yield pool.imap(fn, items, chunksize)
        pool.close()
        pool.join()

"""The GPU's image views replayed as CUDA graphs: one launch per view in place of ~1,900.

A view of a batch is about 1,900 small ATen ops (`benchmarks/images.py --sections ops`);
on a GPU each is a kernel launch, and at 32 px the host's launches, not the GPU, set the
pace (BENCHMARKS.md, "On one GPU"). The sync-free form of the views has no data-dependent
shape and never waits on the device, so its ops can be captured once per input shape with
torch's public `torch.cuda.graph` and replayed.

What stays eager: drawing the random parameters (about 20 small kernels from the caller's
generator), so the generator's stream, a resumed run's views and the views themselves are
the same with or without graphs (tested on a GPU: `tests/test_gpu.py`). The parameters and
the batch are copied into the graph's static inputs, the graph replays, and its output is
cloned before anything else can replay into the shared memory pool.

Why hand-written: `torch.cuda.make_graphed_callables` graphs autograd-aware modules (the
views need no gradient) and `torch.compile(mode="reduce-overhead")` adds minutes of
compilation on first use and recompiles per shape; a plain capture is enough here.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import torch

log = logging.getLogger("rayssl")

MAX_SHAPES = 8  # graphs kept per view pipeline (training, last and evaluation batches)
_LOCK = threading.Lock()  # one capture at a time in a process (torch's rule)


class GraphPool:
    """The graph memory pool that the views of one owner (an `Augment`) share. The graphs
    replay one after another on one stream and each output is cloned right away, so they
    can share their intermediates' memory. The first graph captured makes the pool and is
    kept here: a pool lives only while a graph holds it, and a handle to a freed pool must
    not be reused (torch's caching allocator asserts)."""

    def __init__(self):
        self.first: torch.cuda.CUDAGraph | None = None

    @property
    def handle(self):
        return None if self.first is None else self.first.pool()

    def captured(self, graph: torch.cuda.CUDAGraph) -> None:
        if self.first is None:
            self.first = graph


def _tensors(draws: tuple) -> list[torch.Tensor]:
    """The draws' tensors in order, through nested named tuples (RandAugment's draws)."""
    return [u for t in draws for u in (_tensors(t) if isinstance(t, tuple) else [t])]


def _cloned(draws: tuple) -> tuple:
    return type(draws)(*(_cloned(t) if isinstance(t, tuple) else t.clone() for t in draws))


class _Captured:
    """One captured view: its static inputs (batch and parameters), graph and output."""

    def __init__(self, fn: Callable, x: torch.Tensor, draws: tuple, pool: GraphPool):
        self.x = x.clone()
        self.draws = _cloned(draws)
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):  # warm-up: lazy handles and workspaces, off the graph
            for _ in range(2):
                fn(self.x, self.draws)
        torch.cuda.current_stream(x.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: a loader's pinning thread may touch CUDA meanwhile; that is not ours
        with torch.cuda.graph(self.graph, pool=pool.handle, capture_error_mode="thread_local"):
            self.out = fn(self.x, self.draws)
        pool.captured(self.graph)

    def __call__(self, x: torch.Tensor, draws: tuple) -> torch.Tensor:
        self.x.copy_(x)
        for static, value in zip(_tensors(self.draws), _tensors(draws), strict=True):
            static.copy_(value)
        self.graph.replay()
        return self.out.clone()


class ViewGraphs:
    """`fn(x, draws)` (the views' sync-free form), captured per input shape, dtype, layout
    and autocast state on the first batch of each, and replayed after. A shape that cannot
    be captured, or one past `MAX_SHAPES`, runs eagerly (logged once). `pool`: shared
    with the owner's other views (one device per owner); None: its own."""

    def __init__(self, fn: Callable[[torch.Tensor, tuple], torch.Tensor], pool=None):
        self.fn, self.pool = fn, pool or GraphPool()
        self.graphs: dict[tuple, _Captured | None] = {}

    def __call__(self, x: torch.Tensor, draws: tuple) -> torch.Tensor:
        key = (
            tuple(x.shape),
            x.stride(),
            x.dtype,
            x.device,
            torch.is_autocast_enabled("cuda"),
            torch.get_autocast_dtype("cuda"),
            tuple((tuple(t.shape), t.dtype, t.device) for t in _tensors(draws)),
        )
        if key not in self.graphs:
            self.graphs[key] = self._capture(key, x, draws)
        captured = self.graphs[key]
        return self.fn(x, draws) if captured is None else captured(x, draws)

    def _capture(self, key: tuple, x: torch.Tensor, draws: tuple) -> _Captured | None:
        if sum(g is not None for g in self.graphs.values()) >= MAX_SHAPES:
            log.info("image views: more than %d batch shapes; %s runs eagerly", MAX_SHAPES, key[0])
            return None
        try:
            with _LOCK:
                return _Captured(self.fn, x, draws, self.pool)
        except RuntimeError as err:  # a capture the driver refuses: the eager views still work
            log.warning("image views: no CUDA graph for batch %s (%s); eager", key[0], err)
            return None

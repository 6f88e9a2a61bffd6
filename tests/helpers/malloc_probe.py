"""Where glibc puts a 24-MB and a 256-MB block (tests/test_allocator.py): `where_a_block_lives`
in the calling thread, and a user backbone factory that reports it for a training forward,
written to `out`. On the PYTHONPATH of the tests, their subprocesses and Ray's workers."""

import ctypes
import os
from pathlib import Path

import torch
from torch import nn

from rayssl.nets import cnn1d

BLOCK = 24 << 20  # above glibc's first mmap threshold (128 KB): mapped by default
HUGE = 256 << 20  # above the 32-MB threshold rayssl sets: mapped, and returned when freed


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd",
            "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost",
        )
    ]  # fmt: skip


def where_a_block_lives() -> dict:
    """In the calling thread: a 24-MB torch tensor made, then a 256-MB one; glibc's count of
    bytes in blocks mapped on their own while each lives (`mallinfo2`'s hblkhd), and the
    allocator's environment."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    seen = {}
    for key, size in (("mapped_bytes", BLOCK), ("huge_mapped_bytes", HUGE)):
        before = libc.mallinfo2().hblkhd
        block = torch.empty(size // 4).fill_(1.0)
        seen[key] = libc.mallinfo2().hblkhd - before
        del block
    names = ("MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
    return {**seen, "env": {n: os.environ.get(n) for n in names}}


def probe_worker(config: dict) -> None:
    """A train function for rayssl's TorchTrainer: the probe, from Ray Train's thread,
    written to `probe/rank<r>.json` in the run's folder, as build_trainer gave it."""
    import json

    import ray.train

    rank = ray.train.get_context().get_world_rank()
    out = Path(config["args"].run_dir, "probe")
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{rank}.json").write_text(json.dumps(where_a_block_lives()))


class _Probed(nn.Module):
    def __init__(self, net: nn.Module, out: str):
        super().__init__()
        self.net, self.out = net, Path(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and not self.out.exists():
            self.out.write_text(str(where_a_block_lives()["mapped_bytes"]))
        return self.net(x)


def probed_cnn(input_shape, out: str, width: int = 8):
    return _Probed(cnn1d(input_shape, width=width), out)

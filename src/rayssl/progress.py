"""Progress of long work that is not training (rendering the demo set, embedding splits for
`rayssl eval`, the stages of an export): a bar on a terminal, nothing in a log (CI, a job's
output), where only the command's final line belongs. click draws the bar; this only
decides whether to."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import click

T = TypeVar("T")


def shown() -> bool:
    """Whether stderr is a terminal (a bar there), not a file or pipe."""
    return sys.stderr.isatty()


def bar(items: Iterable[T], label: str, length: int | None = None) -> Iterator[T]:
    """`items`, with a bar labelled `label` on a terminal; unchanged otherwise."""
    if not shown():
        yield from items
        return
    if length is None and hasattr(items, "__len__"):
        length = len(items)  # type: ignore[arg-type]
    with click.progressbar(items, length=length, label=label, file=sys.stderr) as shown_items:
        yield from shown_items


@contextlib.contextmanager
def stages(names: tuple[str, ...], label: str) -> Iterator[Callable[[str], None]]:
    """A bar of `len(names)` steps for work made of a few long calls; the function yielded
    marks one done (its name shows beside the bar). Nothing off a terminal."""
    if not shown():
        yield lambda name: None
        return
    with click.progressbar(
        length=len(names), label=label, file=sys.stderr, item_show_func=lambda name: name
    ) as shown_bar:

        def done(name: str) -> None:
            shown_bar.update(1, name)

        yield done


def reporter(queue) -> Callable[[Iterable[T], str], Iterator[T]]:
    """`bar`'s stand-in in another process (a Ray Train worker of `rayssl eval --workers`):
    each item passed on, and `(label, total, done)` put on `queue` (a `ray.util.queue.Queue`)
    for `relayed` to draw where the terminal is."""

    def wrap(items: Iterable[T], label: str) -> Iterator[T]:
        total = len(items) if hasattr(items, "__len__") else None  # type: ignore[arg-type]
        queue.put((label, total, 0))
        for done, item in enumerate(items, 1):
            yield item
            queue.put((label, total, done))

    return wrap


@contextlib.contextmanager
def relayed(queue) -> Iterator[None]:
    """While the block runs, a thread draws the bars `reporter` sends through `queue` (one
    bar per label, in the order they come); with no queue, nothing."""
    import threading

    from ray.util.queue import Empty

    if queue is None:
        yield
        return
    stop = threading.Event()

    def draw() -> None:
        shown_bar, label, seen = None, None, 0
        while not (stop.is_set() and queue.empty()):
            try:
                name, total, done = queue.get(timeout=0.2)
            except Empty:
                continue
            if name != label:
                if shown_bar is not None:
                    shown_bar.render_finish()
                shown_bar = click.progressbar(length=total, label=name, file=sys.stderr)
                label, seen = name, 0
            shown_bar.update(done - seen)
            seen = done
        if shown_bar is not None:
            shown_bar.render_finish()

    thread = threading.Thread(target=draw, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=30)

"""Frame chunks: one render split into array tasks that never share state.

A render stage writes every frame into one folder and declares that folder as its output.
Split into chunks, each chunk's manifest would then record the hash of the WHOLE folder,
which the other chunks keep changing: every chunk would look "modified after it was
written". :class:`FrameChunkStage` wraps an :class:`ItemStage` built for a chunk's frames and
declares exactly that chunk's item files as its outputs, so each chunk is done, stale or
missing on its own, and a rerun (``portrait retry``) touches only chunks with missing frames.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from .stage import ItemStage, StageContext, StageItem


def chunk_ranges(first: int, last: int, size: int) -> list[tuple[int, int]]:
    """``[(first, first+size-1), ...]`` covering first..last inclusive; the last may be short."""
    if size < 1:
        raise ValueError(f"chunk size must be >= 1, got {size}")
    if last < first:
        return []
    return [(a, min(a + size - 1, last)) for a in range(first, last + 1, size)]


class FrameChunkStage(ItemStage):
    """A chunk of an item stage, with the chunk's own item files as its outputs.

    Everything else (inputs, params, items, how items are made, where state lives) is the
    wrapped stage's; its ``run`` sees a context whose stage is this wrapper, so the ledger,
    progress and manifest are the chunk's (named after ``inner.name``).
    """

    def __init__(self, inner: ItemStage) -> None:
        self.inner = inner
        self.name = inner.validate_name()
        self.version = inner.version
        self.item_unit = getattr(inner, "item_unit", "items")

    def inputs(self) -> dict[str, Path]:
        return self.inner.inputs()

    def params(self) -> dict[str, Any]:
        return self.inner.params()

    def items(self) -> Sequence[StageItem]:
        return self.inner.items()

    def outputs(self) -> dict[str, Path]:
        outs: dict[str, Path] = {}
        for item in self.inner.items():
            for k, p in item.outputs.items():
                outs[f"{item.key}.{k}"] = Path(p)
        return outs

    def state_dir(self) -> Path:
        return self.inner.state_dir()

    def run_item(self, ctx: StageContext, item: StageItem) -> None:
        self.inner.run_item(ctx, item)

    def run(self, ctx: StageContext) -> None:
        self.inner.run(ctx)

    def on_preempt(self) -> Any:
        hook = getattr(self.inner, "on_preempt", None)
        return hook() if callable(hook) else None

    def __getattr__(self, attr: str) -> Any:
        # Stage-specific attributes (layout, frames, ...) read through to the wrapped stage.
        if attr == "inner":
            raise AttributeError(attr)
        return getattr(self.inner, attr)

    def __repr__(self) -> str:
        return f"<FrameChunkStage {self.name!r} of {type(self.inner).__name__}>"

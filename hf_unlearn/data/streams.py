"""`CyclingStream`: a dataloader read without end whose position can be saved in a checkpoint and restored.

The Trainer's resume restores its own train dataloader only. A second stream (the retain batches, LUR's fresh
draws) restarted at its first batch would make a resumed run read different batches from an uninterrupted one;
this stream records where it is (pass number, batches read in the pass, and its samplers' generator states at the
start of the pass) and replays to exactly that point.
"""

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader


class CyclingStream:
    """Batches from `make_dataloader()`, pass after pass (each pass reshuffled through `set_epoch`), resumable.

    Args:
        make_dataloader (`Callable[[], DataLoader]`):
            Builds the (possibly `accelerate`-prepared) dataloader; called once, at the first batch or on restore.
    """

    def __init__(self, make_dataloader: Callable[[], DataLoader]):
        self._make_dataloader = make_dataloader
        self._dataloader: DataLoader | None = None
        self._iterator: Iterator | None = None
        self.epoch = 0
        self.consumed = 0  # batches read in the current pass
        self._pass_start_generators: list[torch.Tensor] = []

    def next(self) -> Any:
        """The next batch; starts a new pass (next epoch, reshuffled) when the current one is exhausted."""
        if self._dataloader is None:
            self._dataloader = self._make_dataloader()
            self._start_pass()
        try:
            batch = next(self._iterator)
        except StopIteration:
            self.epoch += 1
            self._set_epoch(self.epoch)
            self._start_pass()
            batch = next(self._iterator)
        self.consumed += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        """Where the stream is: enough to replay it to the same batch (tensors and ints, for `torch.save`)."""
        return {
            "epoch": self.epoch,
            "consumed": self.consumed,
            "generators": [state.clone() for state in self._pass_start_generators],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Rebuild the dataloader at `state`'s pass and read (and drop) the batches that pass had already given."""
        self._dataloader = self._make_dataloader()
        self.epoch = int(state["epoch"])
        self._set_epoch(self.epoch)
        generators = _generators(self._dataloader)
        if len(generators) != len(state["generators"]):
            raise ValueError(
                f"The checkpoint's stream state has {len(state['generators'])} sampler generators, this dataloader "
                f"{len(generators)}: resume with the same data and batch settings as the run that saved it."
            )
        for generator, saved in zip(generators, state["generators"], strict=True):
            generator.set_state(saved)
        self._start_pass()
        for _ in range(int(state["consumed"])):
            self.next()

    def _start_pass(self) -> None:
        self._pass_start_generators = [generator.get_state() for generator in _generators(self._dataloader)]
        self._iterator = iter(self._dataloader)
        self.consumed = 0

    def _set_epoch(self, epoch: int) -> None:
        if hasattr(self._dataloader, "set_epoch"):
            self._dataloader.set_epoch(epoch)


def _generators(dataloader: Any) -> list[torch.Generator]:
    """Every `torch.Generator` that decides the order of `dataloader` (its samplers', accelerate's synchronised one),
    in a fixed order, each once."""
    found: list[torch.Generator] = []
    pending = [dataloader]
    seen: set[int] = set()
    while pending:
        node = pending.pop(0)
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, torch.Generator):
            found.append(node)
            continue
        for attribute in ("synchronized_generator", "generator", "batch_sampler", "sampler"):
            pending.append(getattr(node, attribute, None))
    return found

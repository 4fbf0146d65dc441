"""Overlap the host-to-device copy of the next batch with the current step.

:class:`DevicePrefetcher` wraps an iterable of batch dicts (the loaders' ``{"video": uint8 (B, C, T, H, W),
"label", "dataset", "key", ...}``). On CUDA it copies every top-level tensor of the NEXT batch to the device
with ``non_blocking=True`` on a side stream while the caller computes on the current one. Before a batch is
handed out, the compute stream waits for its copy (``wait_stream``) and each of its device tensors is
marked as used by the compute stream (``record_stream``), so the caching allocator cannot hand its memory
to the side stream's next copy while the step still reads it. The copy overlaps compute only when the
host tensors are in pinned memory (the loaders pin them when CUDA is available); from pageable memory
it is still correct, but the host waits for it.

On the CPU (and any other non-CUDA device) it is a pass-through: the batches are yielded as they are, the
same objects, with no copy and no read-ahead.

On CUDA it reads one batch ahead: when the caller stops after batch k, batch k + 1 has already been taken
from the wrapped iterable (and dropped). Non-tensor values (``dataset``, ``key`` lists, ...) pass unchanged,
and so do the tensors named in ``host_keys``: by default ``"aug"``, the packed augmentation parameters,
which :func:`tubevit.data.augment.augment_batch` reads on the host (a device copy would cost a host
synchronisation to read back).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch

__all__ = ["DevicePrefetcher"]


class DevicePrefetcher:
    """Iterate over ``batches`` with their tensors on ``device``, the next batch's copy in flight.

    Args:
        batches: an iterable of batch dicts (mappings of str to tensors and other values).
        device: the training device; ``cuda``/``cuda:i``: read-ahead on a side stream; anything else:
            pass-through.
        host_keys: tensors that stay where they are (read on the host by the step).
    """

    def __init__(
        self,
        batches: Iterable[Mapping[str, Any]],
        device: torch.device | str,
        host_keys: tuple[str, ...] = ("aug",),
    ):
        self.batches = batches
        self.host_keys = frozenset(host_keys)
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())

    def __iter__(self) -> Iterator[Mapping[str, Any]]:
        if self.device.type != "cuda":
            return iter(self.batches)
        return self._prefetch()

    def _prefetch(self) -> Iterator[dict[str, Any]]:
        it = iter(self.batches)
        side = torch.cuda.Stream(device=self.device)
        upcoming = self._copy(it, side)
        while upcoming is not None:
            compute = torch.cuda.current_stream(self.device)
            compute.wait_stream(side)  # the compute stream sees this batch's copy complete
            batch = upcoming
            for key, value in batch.items():
                if key not in self.host_keys and isinstance(value, torch.Tensor) and value.is_cuda:
                    value.record_stream(compute)  # freed only after the compute stream used it
            upcoming = self._copy(it, side)  # the next copy runs while the caller computes on `batch`
            yield batch

    def _copy(self, it: Iterator[Mapping[str, Any]], side: torch.cuda.Stream) -> dict[str, Any] | None:
        try:
            host = next(it)
        except StopIteration:
            return None
        with torch.cuda.stream(side):
            return {
                k: v.to(self.device, non_blocking=True)
                if isinstance(v, torch.Tensor) and k not in self.host_keys
                else v
                for k, v in host.items()
            }

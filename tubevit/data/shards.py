"""WebDataset readers of video and image shards: training (resampled) and evaluation (exact) loaders.

Batches are dicts::

    {"video": uint8 (B, C, T, H, W) (images: T == 1),
     "label": int64 (B,)  or  float32 multi-hot (B, K),
     "dataset": str, "key": list[str]}

Conversion to float and ImageNet normalisation happen on the training device
(:func:`tubevit.data.augment.to_model_input`). Training batches depend on ``LoaderConfig.augment_on``:

- ``cpu``: ``"video"`` holds the cropped and augmented clips, ``(B, C, T, size, size)``.
- ``device``: ``"video"`` holds the decoded frames zero-padded to the batch's largest H, W, and ``"aug"`` the
  float32 ``(B, P)`` packed crop + RandAugment parameters (:func:`~tubevit.data.augment.pack_params`);
  ``augment_batch`` applies them on the device. The workers only decode and draw the parameters. The
  video tensor is channels last in memory (a ``(B, T, H, W, C)`` buffer seen as ``(B, C, T, H, W)``), so
  no transpose runs on the CPU; a device copy (``.to(device)``) keeps those strides.
- ``auto``: the loader resolves it with :func:`~tubevit.data.augment.resolve_augment_on` for ``cuda`` when
  CUDA exists, else for ``cpu``; a stage resolves it for its own training device and passes the result.

Every sample's parameters, whichever side applies them, are drawn from its own seed, so a sample looks the
same with either setting up to interpolation numerics. Tensors are written once, in their final layout,
into pinned memory when CUDA exists (shared memory inside DataLoader workers; the DataLoader pins them), or
into batch memory the loader reuses once the caller has let go of a batch (no CUDA, ``workers: 0``).

Evaluation batches are uint8 ``(B, C, T, size, size)`` too, and also hold ``"view": list[int]`` (the view
of the clip, ``v * S + s`` for temporal view v and spatial view s); ``"label"`` is the video-level label.

Training (:class:`ClipLoader` from :func:`train_loader`)
    ``wds.ResampledShards(urls, seed, deterministic=True)`` with rank and worker folded into the seed, the
    shards' samples (:func:`~tubevit.data.tars.tar_samples`: webdataset's samples, local shards read with
    one read per member), a sample shuffle buffer seeded from (seed, epoch, rank, worker), the resume skip,
    a read-ahead of one batch of samples (:func:`_read_ahead`), decode + augment, and batches of
    ``batch_size`` (each sample copied into its slot as soon as it is decoded: :class:`_Batch`).
    ``.with_epoch(epoch_batches)`` on the loader gives every rank the same number of batches. Each
    iteration of a ClipLoader is one epoch: the k-th ``iter()`` reads epoch ``epoch + k``.
    Data order is a pure function of (seed, epoch, rank, worker count, batch index); each sample's
    augmentation is a pure function of (seed, epoch, ``__key__``). Resume: ``start_batch`` skips the
    samples of the batches already consumed, before decoding (data position = step count).
    An undecodable sample is counted, logged with its key and reason, and replaced by the next decodable
    sample of the worker's stream (:class:`_DecodeReplacing`: the replacement looks forward only, so the
    resume skip stays exact); a shard set with no decodable sample raises :class:`NoSamplesError`.
    ``LoaderConfig.cache_mb > 0`` keeps each decoded video (all frames) in memory across epochs
    (:class:`DecodedCache`, per loader, in the process that decodes): later reads slice the same window
    from memory, so batches are identical with and without the cache. Under the same budget the shards'
    samples are kept too (:class:`ShardCache`): a shard drawn again replays its samples without parsing
    the tar.
Evaluation (:func:`eval_loader`)
    The shard list (not resampled) split by rank, then by worker: every sample is read exactly once
    across ranks x workers. Gather predictions by ``key`` and check with :func:`check_complete` against
    ``index.json``'s total.
Joint training (:class:`JointBatches`)
    The dataset of step k is drawn from ``random.Random(seed + k)`` with the given weights: the same on
    every rank. Every batch names its dataset.
Labels
    Single-label: ``json.label``. Multi-label (Charades): training uses the multi-hot of the actions that
    overlap the sampled window [start / fps, (start + T) / fps) seconds; evaluation the video-level
    ``json.labels`` (with the actions' classes when ``labels`` is empty).
Storage
    Local paths, ``file://``, ``http(s)://`` (webdataset's curl) and ``s3://``, ``gs://`` (fsspec; see
    :func:`register_fsspec_handlers`). ``pipe:`` URLs are accepted only as given by the caller (params);
    :func:`shard_urls` never builds one from an index.
"""

from __future__ import annotations

import functools
import importlib
import io
import itertools
import json
import logging
import math
import random
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds

from tubevit.config.data import LoaderConfig
from tubevit.data.augment import augment_clip, pack_params, resolve_augment_on
from tubevit.data.tars import tar_samples
from tubevit.data.transforms import EvalTransform, TrainTransform, sample_seed
from tubevit.data.video import DecodeError, decode_all, decode_clip_eval, decode_clip_train, train_indices

log = logging.getLogger(__name__)

__all__ = [
    "ClipLoader",
    "DecodedCache",
    "JointBatches",
    "NoSamplesError",
    "ShardCache",
    "check_complete",
    "dataset_for_step",
    "eval_loader",
    "read_index",
    "register_fsspec_handlers",
    "shard_urls",
    "step_counts",
    "train_loader",
]

FSSPEC_SCHEMES = ("s3", "gs", "gcs")
_SHARD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\.tar")


# --------------------------------------------------------------------------------------------- storage
def _fsspec_gopen(url: str, mode: str = "rb", bufsize: int = 8192, **kw: Any):
    """webdataset gopen handler: open ``url`` through fsspec (s3://, gs://, memory://, ...)."""
    import fsspec

    return fsspec.open(url, mode).open()


def register_fsspec_handlers(schemes: Iterable[str] = FSSPEC_SCHEMES) -> None:
    """Make webdataset open ``schemes`` URLs through fsspec (idempotent).

    webdataset 1.0.2 has no s3 handler ("no gopen handler defined") and opens gs:// with the gsutil CLI.
    The fsspec backend (s3fs, gcsfs) must be installed where the URLs are read.
    """
    gopen = importlib.import_module("webdataset.gopen")  # the module (``webdataset.gopen`` is a function)
    for scheme in schemes:
        gopen.gopen_schemes[scheme] = _fsspec_gopen


def _open_text(path: str | Path) -> str:
    path = str(path)
    if path.startswith("pipe:"):
        raise ValueError(f"{path}: refusing to read an index through a pipe: URL")
    if "://" in path and not path.startswith("file://"):
        import fsspec

        with fsspec.open(path, "rt", encoding="utf-8") as f:
            return f.read()
    return Path(path.removeprefix("file://")).read_text(encoding="utf-8")


def read_index(index: str | Path) -> dict:
    """Read a shard set's ``index.json`` (a local path or an fsspec URL)."""
    data = json.loads(_open_text(index))
    for key in ("shards", "total", "classes"):
        if key not in data:
            raise ValueError(f"{index}: not a shard index (no {key!r})")
    return data


def shard_urls(index: str | Path) -> list[str]:
    """The URLs of the shards listed in ``index`` (``.../<split>/index.json``), beside the index.

    Shard names must be plain file names (``<ds>-<split>-000000.tar``): a name with a ``/``, a scheme or a
    leading ``-`` is refused, so no ``pipe:`` or other URL can come from an index.
    """
    data = read_index(index)
    base = str(index).rsplit("/", 1)[0] if "/" in str(index) else "."
    urls = []
    for entry in data["shards"]:
        name = entry["name"]
        if not isinstance(name, str) or not _SHARD_NAME.fullmatch(name):
            raise ValueError(f"{index}: refusing shard name {name!r} (must be a plain <name>.tar)")
        urls.append(f"{base}/{name}")
    return urls


def check_complete(keys: Iterable[str], expected: int | str | Path, views: int = 1) -> None:
    """Check that an evaluation pass saw every sample exactly once (``views`` times per key).

    ``expected`` is the sample count or the path of the split's ``index.json``.

    Raises:
        ValueError: naming the duplicated keys or the missing count.
    """
    total = expected if isinstance(expected, int) else int(read_index(expected)["total"])
    counts: dict[str, int] = {}
    for k in keys:
        counts[k] = counts.get(k, 0) + 1
    wrong = sorted(k for k, c in counts.items() if c != views)
    if wrong:
        raise ValueError(f"keys seen a wrong number of times (expected {views}): {wrong[:10]}")
    if len(counts) != total:
        raise ValueError(f"evaluation saw {len(counts)} samples, the index lists {total}")


# --------------------------------------------------------------------------------------------- workers
def _worker() -> tuple[int, int]:
    """(worker id, number of workers) of the current DataLoader worker; (0, 1) in the main process."""
    info = torch.utils.data.get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def _as_is(batch: dict) -> dict:
    """The DataLoader's collate for our batches: they are assembled already (its default walks the dict
    converting numpy arrays, of which there are none)."""
    return batch


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def _logical_worker(start_batch: int) -> tuple[int, int]:
    """(logical worker, number of workers): the worker whose batches are at positions l, l + W, ... of an
    epoch. The DataLoader takes batch i of an iteration from worker i % W; an iteration that starts at
    batch ``start_batch`` (resume) therefore gives worker w the positions of logical worker
    (w + start_batch) % W. Data order depends on the logical worker only, so a resumed epoch continues
    exactly where the interrupted one stopped."""
    worker, workers = _worker()
    return (worker + start_batch) % workers, workers


class _WorkerSeed:
    """ResampledShards' worker seed: folds the rank and the (logical) worker into its shard draws."""

    def __init__(self, rank: int, start_batch: int = 0):
        self.rank = rank
        self.start_batch = start_batch

    def __call__(self) -> int:
        return sample_seed("shards", self.rank, _logical_worker(self.start_batch)[0]) & 0x7FFFFFFF


def _ensure_handlers(src):
    register_fsspec_handlers()  # again inside workers (spawned workers re-import webdataset)
    yield from src


def _split_by_rank(rank: int, world_size: int) -> Callable:
    def stage(src):
        for i, item in enumerate(src):
            if i % world_size == rank:
                yield item

    return stage


def _split_by_worker(src):
    worker, workers = _worker()
    for i, item in enumerate(src):
        if i % workers == worker:
            yield item


def _seeded_shuffle(bufsize: int, seed: int, rank: int, start_batch: int = 0) -> Callable:
    def stage(src):
        worker, _ = _logical_worker(start_batch)
        yield from wds.shuffle(bufsize, initial=bufsize, seed=sample_seed("shuffle", seed, rank, worker))(src)

    return stage


def _read_ahead(n: int, prepare: Callable[[dict], None] | None = None) -> Callable:
    """Pull ``n`` samples at a time from upstream (tar reads, shuffle) and ``prepare`` each, then hand them
    on one by one.

    The order is unchanged; the reading runs as one loop instead of between two decodes, where each
    decode has evicted the reader's code and data from the CPU caches.
    """

    def stage(src):
        it = iter(src)
        while chunk := list(itertools.islice(it, n)):
            if prepare is not None:
                for sample in chunk:
                    prepare(sample)
            yield from chunk
            chunk = None  # release the chunk's bytes before reading the next

    return stage


def _skip_consumed(start_batch: int, batch_size: int) -> Callable:
    """Drop, in this worker, the samples of the first ``start_batch`` loader batches that it would make.

    Logical worker l (:func:`_logical_worker`) made ceil((k - l) / W) of the first k batches.
    """

    def stage(src):
        worker, workers = _logical_worker(start_batch)
        skip = max(0, -(-(start_batch - worker) // workers)) * batch_size
        for i, sample in enumerate(src):
            if i >= skip:
                yield sample

    return stage


# --------------------------------------------------------------------------------------------- samples
def _media(sample: dict) -> tuple[str, bytes]:
    for ext in ("mp4", "jpg", "jpeg"):
        if ext in sample:
            return ext, sample[ext]
    raise DecodeError(f"{sample.get('__url__')}:{sample.get('__key__')}: no mp4 or jpg member")


def _decode_image(data: bytes, name: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.array(im.convert("RGB"))[None]  # (1, H, W, 3)
    except Exception as exc:
        raise DecodeError(f"{name}: cannot decode image ({exc})") from None


def multi_hot(classes: Iterable[int], num_classes: int) -> torch.Tensor:
    """float32 ``(num_classes,)`` with 1 at each of ``classes``."""
    out = torch.zeros(num_classes, dtype=torch.float32)
    for c in classes:
        out[int(c)] = 1.0
    return out


def window_classes(actions: Iterable, start_s: float, end_s: float) -> list[int]:
    """Classes of the actions ``[class, start s, end s]`` that overlap the window [start_s, end_s)."""
    return sorted({int(c) for c, a, b in actions if a < end_s and b > start_s})


def _video_label(meta: dict, num_classes: int, multilabel: bool) -> int | torch.Tensor:
    """A sample's label: the class index (a Python int: the batch makes the tensor) or float32 multi-hot
    ``(num_classes,)``."""
    if multilabel:
        labels = meta.get("labels") or [a[0] for a in meta.get("actions", [])]
        return multi_hot(labels, num_classes)
    if meta.get("label") is None:
        raise DecodeError(f"{meta.get('id')}: no label")
    return int(meta["label"])


class DecodedCache:
    """Decoded media of training samples, kept in memory up to ``max_bytes``: (shard URL, key) -> uint8
    ``(N, H, W, C)`` (every frame of a video; an image is ``(1, H, W, C)``).

    A sample that does not fit any more is decoded again each time it is read; nothing is evicted, so
    the cached set does not depend on the order of reads beyond the first epoch's. Cached or not, a
    sample gives the same frames (:func:`~tubevit.data.video.decode_all` equals a window's decode).
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self.bytes = 0
        self.items: dict[tuple[str, str], np.ndarray] = {}
        self.hits = 0
        self.misses = 0

    def get(self, url: str, key: str, decode: Callable[[], np.ndarray]) -> np.ndarray:
        """The cached array of (url, key), or ``decode()`` (kept if it fits the budget)."""
        found = self.items.get((url, key))
        if found is not None:
            self.hits += 1
            return found
        self.misses += 1
        array = decode()
        if self.bytes + array.nbytes <= self.max_bytes:
            self.items[(url, key)] = array
            self.bytes += array.nbytes
        return array


def _noting(handler: Callable[[Exception], bool], seen: list[Exception]) -> Callable[[Exception], bool]:
    """``handler`` that also appends each exception to ``seen``."""

    def note(exn: Exception) -> bool:
        seen.append(exn)
        return handler(exn)

    return note


class ShardCache:
    """The samples of training shards, kept in memory up to ``max_bytes`` (their members' bytes): shard URL
    -> the list of its sample dicts, in tar order.

    A resampled training stream reads every shard again and again; parsing the tar each time (headers,
    checksums, member reads: about 0.35 ms per sample) was the largest per-step cost of the embedded
    default. :meth:`stage` replaces ``wds.tarfile_to_samples``: a shard read whole and without error is
    kept if it fits, and later draws of it replay the same samples (fresh dicts holding the same bytes)
    in the same order, so the stream is identical with and without the cache. A shard that failed, or
    that the reader left early (end of an epoch), is not kept; nothing is evicted.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self.bytes = 0
        self.items: dict[str, list[dict]] = {}
        self.hits = 0
        self.misses = 0

    def stage(self, handler: Callable[[Exception], bool]) -> Callable[[Iterable[dict]], Iterator[dict]]:
        """A pipeline stage: ``{"url": ...}`` items in, samples ``{"__key__", "__url__", <ext>: bytes}``
        out, as ``wds.tarfile_to_samples(handler=handler)`` yields them (shard by shard)."""

        def run(src: Iterable[dict]) -> Iterator[dict]:
            for item in src:
                url = item["url"]
                cached = self.items.get(url)
                if cached is not None:
                    self.hits += 1
                    for sample in cached:
                        yield dict(sample)
                    continue
                self.misses += 1
                failed: list[Exception] = []
                note = _noting(handler, failed)
                kept: list[dict] = []
                size = 0
                for sample in tar_samples(note)(iter([dict(item)])):
                    kept.append(dict(sample))
                    size += sum(len(v) for v in sample.values() if isinstance(v, bytes | str))
                    yield sample
                if not failed and self.bytes + size <= self.max_bytes:
                    self.items[url] = kept
                    self.bytes += size

        return run


def _use_count(t: torch.Tensor) -> int:
    """How many tensors (and array views) share ``t``'s memory (0 where torch cannot tell)."""
    count = getattr(torch._C, "_storage_Use_Count", None)
    return int(count(t.untyped_storage()._cdata)) if count is not None else 0


class _BufferPool:
    """Batch memory reused across batches in the training process when nothing pins it (no CUDA).

    A fresh multi-MB tensor costs a page fault and a kernel zeroing per page on first touch: at 64 x 224^2
    that is 10-15 ms per clip, a third of the clip's decode time. A buffer is handed out again only once
    no tensor or array view of it remains (its storage use count is back to the pool's own), so a batch
    still held by the caller is never overwritten. With CUDA the pinned caching allocator reuses memory
    itself (and knows about in-flight copies); DataLoader workers allocate shared memory instead.
    """

    def __init__(self, size: int = 4):
        self.size = size
        self.buffers: list[tuple[torch.Tensor, int]] = []  # (flat uint8 buffer, its idle use count)

    def take(self, nbytes: int) -> torch.Tensor:
        """A flat uint8 tensor of ``nbytes`` bytes nobody else holds (uninitialised contents): a new view,
        so that holding it counts as a use of the buffer."""
        idle = [i for i, (buf, count) in enumerate(self.buffers) if count and _use_count(buf) == count]
        for i in idle:
            if self.buffers[i][0].numel() == nbytes:
                return self.buffers[i][0].view(nbytes)
        buf = torch.empty(nbytes, dtype=torch.uint8)
        if idle:
            self.buffers[idle[0]] = (buf, _use_count(buf))
        elif len(self.buffers) < self.size:
            self.buffers.append((buf, _use_count(buf)))
        return buf.view(nbytes)

    def __getstate__(self) -> dict:  # a copy sent to a DataLoader worker starts empty
        return {"size": self.size, "buffers": []}


def _empty(
    shape: tuple[int, ...], dtype: torch.dtype, *, zero: bool = False, pool: _BufferPool | None = None
) -> torch.Tensor:
    """An uninitialised (or zeroed) CPU tensor where a batch is assembled once, in its final place: shared
    memory in a DataLoader worker (as the default collate does: no copy when the batch crosses to the main
    process), pinned memory in the main process when CUDA exists, else ``pool`` memory (or plain)."""
    numel = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    if torch.utils.data.get_worker_info() is not None:
        out = torch.empty(0, dtype=dtype).set_(torch.UntypedStorage._new_shared(numel)).view(shape)
    elif torch.cuda.is_available() or pool is None:
        out = torch.empty(shape, dtype=dtype, pin_memory=torch.cuda.is_available())
    else:
        out = pool.take(numel).view(dtype).view(shape)
    return out.zero_() if zero else out


class _TrainSample:
    """Decode one training sample and draw its augmentation; apply it here or leave it to the device.

    ``augment_on="cpu"``: ``{"video": uint8 (C, T, size, size), "label", "key"}``, cropped and augmented.
    ``augment_on="device"``: ``{"video": uint8 (T, H, W, C) decoded frames, "params": () -> ClipParams,
    ...}`` (the draw, made when the batch is assembled); the crop and RandAugment run batched on the
    training device from the packed parameters.
    Both draw the same parameters for a sample (``TrainTransform.params``, i.e.
    :func:`~tubevit.data.augment.draw_clip_params`) from the seed that follows the window draw of
    ``random.Random(sample_seed(seed, epoch, __key__))``.
    """

    def __init__(
        self,
        lcfg: LoaderConfig,
        num_classes: int,
        multilabel: bool,
        seed: int,
        epoch: int,
        cache: DecodedCache | None = None,
        augment_on: str = "cpu",
    ):
        if augment_on not in ("cpu", "device"):
            raise ValueError(f"augment_on must be 'cpu' or 'device' here, got {augment_on!r}")
        self.cache = cache
        self.frames = lcfg.frames
        self.num_classes = num_classes
        self.multilabel = multilabel
        self.seed = seed
        self.epoch = epoch
        self.augment_on = augment_on
        self.transform = TrainTransform(
            lcfg.size,
            scale=lcfg.crop_scale,
            ratio=lcfg.crop_ratio,
            randaugment=lcfg.randaugment,
            num_ops=lcfg.randaugment_ops,
            magnitude=lcfg.randaugment_magnitude,
            normalized=False,
        )

    def prepare(self, sample: dict) -> None:
        """Parse the sample's json and compute its seed ahead of its decode (:func:`_read_ahead`): kept in
        the sample as ``"__prepared__"`` (a json that does not parse is kept as the error it raises)."""
        key = sample["__key__"]
        try:
            meta = json.loads(sample["json"])
        except (KeyError, ValueError) as exc:
            meta = DecodeError(f"{sample.get('__url__')}:{key}: no readable json member ({exc!r})")
        sample["__prepared__"] = (meta, sample_seed(self.seed, self.epoch, key))

    def __call__(self, sample: dict) -> dict:
        key = sample["__key__"]
        name = f"{sample.get('__url__')}:{key}"
        if "__prepared__" not in sample:
            self.prepare(sample)
        meta, seed = sample["__prepared__"]
        if isinstance(meta, DecodeError):
            raise meta
        ext, data = _media(sample)
        rng = random.Random(seed)
        url = str(sample.get("__url__"))
        if ext == "mp4":
            if self.cache is not None:
                video = self.cache.get(url, key, lambda: decode_all(data, name))
                idx = train_indices(len(video), self.frames, rng)  # the rng draws of decode_clip_train
                start = int(idx[0])
                # consecutive frames: a view of the cached video (no copy here; the collate copies it
                # once); a video shorter than the window repeats its last frame (a gather)
                consecutive = int(idx[-1]) - start == len(idx) - 1
                frames = video[start : start + len(idx)] if consecutive else video[idx]
            else:
                frames, start, _ = decode_clip_train(data, self.frames, rng, name)
            if self.multilabel and meta.get("actions") is not None:
                fps = float(meta["fps"])
                classes = window_classes(meta["actions"], start / fps, (start + self.frames) / fps)
                label = multi_hot(classes, self.num_classes)
            else:
                label = _video_label(meta, self.num_classes, self.multilabel)
        else:
            if self.cache is not None:
                frames = self.cache.get(url, key, lambda: _decode_image(data, name))
            else:
                frames = _decode_image(data, name)
            label = _video_label(meta, self.num_classes, self.multilabel)
        frames = torch.from_numpy(np.ascontiguousarray(frames))  # (T, H, W, C): no copy when contiguous
        draw = functools.partial(
            self.transform.params, int(frames.shape[1]), int(frames.shape[2]), rng.getrandbits(63)
        )
        if self.augment_on == "cpu":  # uint8 (C, T, size, size), cropped and augmented here
            return {"video": augment_clip(frames, draw()), "label": label, "key": key}
        # the batch draws every sample's params in one loop once it is full (the draw's torch calls run
        # several times faster warm than right after a decode has evicted them from the CPU's caches)
        return {"video": frames, "params": draw, "label": label, "key": key}


class NoSamplesError(RuntimeError):
    """A training shard set yields no decodable sample (every shard unreadable or every sample bad)."""


class _Guard:
    """Counts a worker's undecodable samples and unreadable shards, logs each with its key and reason, and
    fails with :class:`NoSamplesError` when the shard set yields nothing (instead of resampling forever).

    The check is exact and cheap: the first time a sample fails (or every shard has been drawn once and
    none held a sample) before any sample decoded in this worker, the worker reads the shards in order
    until one sample decodes; if none does, the set yields nothing. ``counts`` is shared with the
    :class:`ClipLoader` when the pipeline runs in its process (``workers: 0``).
    """

    def __init__(self, urls: list[str], dataset: str, decode: Callable[[dict], dict], counts: dict):
        self.urls = list(urls)
        self.dataset = dataset
        self.decode = decode
        self.counts = counts
        self.decoded = 0
        self.drawn = 0
        self.read = 0
        self.verified = False

    def shard_error(self, exn: Exception) -> bool:
        """webdataset handler of a shard that cannot be read: count, log, continue."""
        self.counts["shard_errors"] = self.counts.get("shard_errors", 0) + 1
        log.warning("%s: skipping an unreadable training shard: %s", self.dataset, exn)
        return True

    def failed(self, sample: dict, exc: Exception) -> None:
        self.counts["skipped"] = self.counts.get("skipped", 0) + 1
        log.warning(
            "%s: undecodable training sample %s:%s (%s); replaced by the next decodable one (%d skipped)",
            self.dataset,
            sample.get("__url__"),
            sample.get("__key__"),
            exc,
            self.counts["skipped"],
        )
        if self.decoded == 0:
            self.verify()

    def urls_stage(self, src: Iterable[dict]) -> Iterator[dict]:
        for item in src:
            self.drawn += 1
            if self.read == 0 and self.drawn > len(self.urls):
                self.verify()
            yield item

    def samples_stage(self, src: Iterable[dict]) -> Iterator[dict]:
        for sample in src:
            self.read += 1
            yield sample

    def verify(self) -> None:
        """Read the shards in order until one sample decodes; raise :class:`NoSamplesError` if none does."""
        if self.verified:
            return
        reasons: list[str] = []
        samples = 0

        def note(exn: Exception) -> bool:
            reasons.append(str(exn))
            return True

        for url in self.urls:
            pipe = wds.DataPipeline(wds.SimpleShardList([url]), tar_samples(note))
            for sample in pipe:
                samples += 1
                try:
                    self.decode(sample)
                except Exception as exc:
                    reasons.append(f"{sample.get('__key__')}: {exc}")
                    continue
                self.verified = True
                return
        first = f"; first failure: {reasons[0]}" if reasons else ""
        raise NoSamplesError(
            f"{self.dataset}: the training shard set yields no decodable sample "
            f"({len(self.urls)} shards, {samples} samples, all unusable){first}"
        )


class _DecodeReplacing:
    """Pipeline stage: decode each sample; an undecodable one is counted, logged and replaced by the next
    decodable sample of the same stream (emitted once more for each one it replaces).

    The replacement looks only forward, so it does not depend on where the iteration started: the k-th
    sample out is a function of the raw samples k, k+1, ... of the worker's stream, and the resume skip
    (``start_batch`` x batch size raw samples, :func:`_skip_consumed`) stays exact with bad samples.
    """

    def __init__(self, decode: Callable[[dict], dict], guard: _Guard):
        self.decode = decode
        self.guard = guard

    def __call__(self, src: Iterable[dict]) -> Iterator[dict]:
        pending = 0
        for sample in src:
            try:
                out = self.decode(sample)
            except NoSamplesError:
                raise
            except Exception as exc:
                self.guard.failed(sample, exc)
                pending += 1
                continue
            self.guard.decoded += 1
            for _ in range(pending + 1):
                yield out
            out = None  # release the frames (copied into the batch) before the next decode
            pending = 0


class _EvalSample:
    """Decode one evaluation sample into its V x S views, uint8 ``(C, T, size, size)`` (runs in the worker)."""

    def __init__(self, lcfg: LoaderConfig, num_classes: int, multilabel: bool):
        self.frames = lcfg.frames
        self.views = lcfg.temporal_views
        self.num_classes = num_classes
        self.multilabel = multilabel
        self.transform = EvalTransform(lcfg.size, lcfg.spatial_views, normalized=False)

    def __call__(self, src: Iterable[dict]) -> Iterator[dict]:
        for sample in src:
            key = sample["__key__"]
            name = f"{sample.get('__url__')}:{key}"
            meta = json.loads(sample["json"])
            ext, data = _media(sample)
            if ext == "mp4":
                clips, _ = decode_clip_eval(data, self.frames, self.views, name)  # (V, T, H, W, C)
            else:
                clips = _decode_image(data, name)[None]  # (1, 1, H, W, C)
            label = _video_label(meta, self.num_classes, self.multilabel)
            spatial = self.transform.spatial_views
            for v, clip in enumerate(clips):
                for s, view in enumerate(self.transform(clip)):  # uint8 (S, C, T, size, size)
                    yield {"video": view, "label": label, "key": key, "view": v * spatial + s}


def _batched(batch_size: int, collate: _Collate, partial: bool) -> Callable:
    """Pipeline stage: batches of ``batch_size`` samples, each yielded as soon as it is full.

    Each sample's video is copied into its slot of the batch as soon as it arrives (:class:`_Batch`), so
    the decoder's output is released before the next sample is decoded, and the allocator hands the same
    memory back to the next decode. (Holding a batch's B decoded clips until the batch is full freed them
    all at once; glibc then returned that memory to the system and the next batch faulted every page in
    again: 90-160 page faults per 16 x 128 x 227 clip, 0.4-0.5 ms of kernel time against 6 ms of decoding.)
    (``wds.batched`` yields a batch only once the next sample has been decoded: one decode wasted per
    epoch and per worker, and every batch waits for the next batch's first sample.) ``partial``: also
    yield the last, smaller batch.
    """

    def stage(src: Iterable[dict]) -> Iterator[dict]:
        batch = collate.batch(batch_size)
        for sample in src:
            batch.add(sample)
            sample = None  # release the sample's frames before the next decode
            if len(batch) == batch_size:
                yield batch.finish()
                batch = collate.batch(batch_size)
        if len(batch) and partial:
            yield batch.finish()

    return stage


class _Collate:
    """Assemble samples into a batch dict that names its dataset, each tensor written once in its place.

    ``"video"`` is uint8 ``(B, C, T, H, W)``: the samples' clips stacked (cpu augmentation, evaluation);
    or, for device augmentation, the decoded ``(T, H, W, C)`` frames copied into a zero-padded
    ``(B, T, Hmax, Wmax, C)`` buffer and returned as its ``(B, C, T, H, W)`` view (channels last in
    memory: no transpose on the CPU; the device copy keeps the strides), with ``"aug"`` float32 ``(B, P)``
    from :func:`~tubevit.data.augment.pack_params`. Pinned when CUDA exists (see :func:`_empty`).
    :meth:`batch` starts a batch that takes its samples one at a time (:class:`_Batch`); calling the
    collate on a list of samples assembles them in one go.
    """

    def __init__(self, dataset: str, pool: _BufferPool | None = None):
        self.dataset = dataset
        self.pool = pool

    def batch(self, size: int) -> _Batch:
        """An empty batch of at most ``size`` samples."""
        return _Batch(self.dataset, size, self.pool)

    def __call__(self, samples: list[dict]) -> dict:
        batch = self.batch(len(samples))
        for sample in samples:
            batch.add(sample)
        return batch.finish()


class _Batch:
    """One batch being assembled: :meth:`add` copies a sample's video into its slot at once (the buffer is
    allocated with the first sample, for ``size`` samples), :meth:`finish` returns the batch dict.

    Device samples (``"params"`` present) may differ in H, W: a larger sample grows the buffer to the
    largest H and W so far (earlier slots are copied over, once per growth), and every slot's padding is
    zero. Other samples must all have the first one's shape.
    """

    def __init__(self, dataset: str, size: int, pool: _BufferPool | None):
        self.dataset = dataset
        self.size = size
        self.pool = pool
        self.buffer: torch.Tensor | None = None  # (size, T, H, W, C) device samples, else (size, *video)
        self.device = False
        self.labels: list[int | torch.Tensor] = []  # class indices or multi-hot (K,)
        self.keys: list[str] = []
        self.params: list = []
        self.views: list[int] = []

    def __len__(self) -> int:
        return len(self.keys)

    def add(self, sample: dict) -> None:
        """Copy ``sample["video"]`` into the next slot and keep its label, key (and params, view)."""
        b = len(self.keys)
        if b >= self.size:
            raise ValueError(f"batch of {self.size} samples is full; cannot add {sample.get('key')}")
        video = sample["video"]
        if self.buffer is None:
            self.device = "params" in sample
            self.buffer = _empty((self.size, *video.shape), video.dtype, pool=self.pool)
        if self.device:
            self._add_frames(b, video, sample.get("key"))
            self.params.append(sample["params"])
        else:
            if tuple(video.shape) != tuple(self.buffer.shape[1:]) or video.dtype != self.buffer.dtype:
                raise ValueError(
                    f"{sample.get('key')}: video {tuple(video.shape)} {video.dtype} does not match the"
                    f" batch's {tuple(self.buffer.shape[1:])} {self.buffer.dtype}"
                )
            self.buffer[b].copy_(video)
        self.labels.append(sample["label"])
        self.keys.append(sample["key"])
        if "view" in sample:
            self.views.append(sample["view"])

    def _add_frames(self, b: int, video: torch.Tensor, key: object) -> None:
        """Write decoded frames (T, h, w, C) into slot ``b`` of the (size, T, H, W, C) buffer, top left."""
        buf = self.buffer
        t, h, w, c = video.shape
        if (t, c) != (buf.shape[1], buf.shape[4]) or video.dtype != buf.dtype:
            raise ValueError(
                f"{key}: frames {tuple(video.shape)} {video.dtype} do not match the batch's"
                f" (T, H, W, C) = {tuple(buf.shape[1:])} {buf.dtype}"
            )
        height, width = buf.shape[2], buf.shape[3]
        if h > height or w > width:  # grow to the largest frames so far, zero-padded
            height, width = max(h, height), max(w, width)
            grown = _empty((self.size, t, height, width, c), buf.dtype, zero=True, pool=self.pool)
            grown[:b, :, : buf.shape[2], : buf.shape[3]].copy_(buf[:b])
            self.buffer = buf = grown
        buf[b, :, :h, :w].copy_(video)
        if h < height:
            buf[b, :, h:].zero_()
        if w < width:
            buf[b, :, :h, w:].zero_()

    def finish(self) -> dict:
        """The batch dict (see :class:`_Collate`) of the samples added."""
        n = len(self.keys)
        if n == 0:
            raise ValueError("an empty batch")
        buffer = self.buffer
        if n < self.size:  # a last, smaller batch: its own memory, exactly sized
            buffer = _empty((n, *buffer.shape[1:]), buffer.dtype, pool=self.pool).copy_(buffer[:n])
        batch: dict[str, Any] = {}
        if self.device:
            batch["video"] = buffer.permute(0, 4, 1, 2, 3)
            packed = pack_params([p() if callable(p) else p for p in self.params])
            batch["aug"] = _empty(tuple(packed.shape), packed.dtype).copy_(packed)
        else:
            batch["video"] = buffer
        labels = self.labels
        if isinstance(labels[0], int):  # class indices: int64 (B,) in one call
            batch["label"] = _empty((n,), torch.int64).copy_(torch.tensor(labels, dtype=torch.int64))
        else:  # multi-hot (B, K)
            batch["label"] = torch.stack(labels, out=_empty((n, *labels[0].shape), labels[0].dtype))
        batch["dataset"] = self.dataset
        batch["key"] = list(self.keys)
        if self.views:
            batch["view"] = list(self.views)
        self.buffer = None
        return batch


# --------------------------------------------------------------------------------------------- loaders
class ClipLoader:
    """Training loader of one dataset: each ``iter()`` yields exactly ``epoch_batches`` batches (one epoch).

    The k-th iteration reads epoch ``epoch + k``; the first one starts after ``start_batch`` batches
    (resume) and yields ``epoch_batches - start_batch``. See the module docstring for the pipeline.

    Attributes:
        augment_on: ``"cpu"`` or ``"device"`` (``LoaderConfig.augment_on`` resolved).
        counts: ``{"skipped": undecodable samples replaced, "shard_errors": unreadable shards}`` seen in this
            process (``workers: 0``); DataLoader workers count in their own copies and log every one.
    """

    def __init__(
        self,
        urls: list[str],
        lcfg: LoaderConfig,
        *,
        dataset: str,
        num_classes: int,
        multilabel: bool,
        seed: int,
        epoch_batches: int,
        rank: int = 0,
        world_size: int = 1,
        epoch: int = 0,
        start_batch: int = 0,
    ):
        if not urls:
            raise ValueError(f"{dataset}: no shard URLs")
        if not 0 <= rank < world_size:
            raise ValueError(f"{dataset}: rank {rank} not in [0, {world_size})")
        if not 0 <= start_batch <= epoch_batches:
            raise ValueError(f"{dataset}: start_batch {start_batch} not in [0, {epoch_batches}]")
        self.urls = list(urls)
        self.lcfg = lcfg
        self.dataset = dataset
        self.num_classes = num_classes
        self.multilabel = multilabel
        self.seed = seed
        self.epoch_batches = epoch_batches
        self.rank = rank
        self.world_size = world_size
        self.epoch = epoch
        self.start_batch = start_batch
        # decoded media kept across epochs (in this process: see LoaderConfig.cache_mb)
        self.cache = DecodedCache(lcfg.cache_mb * 1024 * 1024) if lcfg.cache_mb > 0 else None
        # the shards' samples kept across epochs, under the same budget (tar parsing skipped on re-reads)
        self.shard_cache = ShardCache(lcfg.cache_mb * 1024 * 1024) if lcfg.cache_mb > 0 else None
        # "auto": device when CUDA exists (the stage passes the resolved value for its training device)
        self.augment_on = resolve_augment_on(
            lcfg.augment_on, torch.device("cuda" if torch.cuda.is_available() else "cpu"), lcfg.workers
        )
        # undecodable samples ("skipped") and unreadable shards ("shard_errors") seen in this process
        # (workers: 0; DataLoader workers count in their own copies and log each one)
        self.counts: dict[str, int] = {"skipped": 0, "shard_errors": 0}
        self.pool = _BufferPool()  # batch memory reused in this process (workers: 0, no CUDA)

    def __len__(self) -> int:
        return self.epoch_batches

    def pipeline(self, epoch: int, start_batch: int = 0) -> wds.DataPipeline:
        """The per-worker sample pipeline of ``epoch`` (an IterableDataset of batches)."""
        lcfg = self.lcfg
        decode = _TrainSample(
            lcfg, self.num_classes, self.multilabel, self.seed, epoch, self.cache, self.augment_on
        )
        guard = _Guard(self.urls, self.dataset, decode, self.counts)
        return wds.DataPipeline(
            wds.ResampledShards(
                self.urls,
                seed=sample_seed("resample", self.seed, epoch) & 0x7FFFFFFF,
                worker_seed=_WorkerSeed(self.rank, start_batch),
                deterministic=True,
            ),
            guard.urls_stage,
            _ensure_handlers,
            (
                self.shard_cache.stage(guard.shard_error)
                if self.shard_cache is not None
                else tar_samples(guard.shard_error)
            ),
            guard.samples_stage,
            _seeded_shuffle(lcfg.shuffle_buffer, sample_seed(self.seed, epoch), self.rank, start_batch),
            _skip_consumed(start_batch, lcfg.batch_size),
            _read_ahead(lcfg.batch_size, decode.prepare),
            _DecodeReplacing(decode, guard),
            _batched(lcfg.batch_size, _Collate(self.dataset, self.pool), partial=False),
        )

    def __iter__(self) -> Iterator[dict]:
        epoch, start = self.epoch, self.start_batch
        self.epoch, self.start_batch = epoch + 1, 0
        if start == self.epoch_batches:
            return iter(())  # resumed at the end of the epoch (with_epoch(0) would mean "no limit")
        register_fsspec_handlers()
        workers = self.lcfg.workers
        loader = wds.WebLoader(
            self.pipeline(epoch, start),
            batch_size=None,
            collate_fn=_as_is,
            num_workers=workers,
            worker_init_fn=_worker_init if workers else None,
            persistent_workers=False,
            pin_memory=bool(workers) and torch.cuda.is_available(),  # workers: 0 pins in the collate
        ).with_epoch(nbatches=self.epoch_batches - start)
        return iter(loader)


def train_loader(
    urls: list[str],
    lcfg: LoaderConfig,
    *,
    dataset: str,
    num_classes: int,
    multilabel: bool = False,
    seed: int = 0,
    epoch_batches: int,
    rank: int = 0,
    world_size: int = 1,
    epoch: int = 0,
    start_batch: int = 0,
) -> ClipLoader:
    """The training loader of one dataset (a :class:`ClipLoader`); see the module docstring.

    Args:
        urls: shard URLs (:func:`shard_urls`, or a list from params; ``pipe:`` only from params).
        lcfg: frames T, crop size, batch size B (per rank), workers, shuffle buffer, augmentation.
        dataset: the name every batch carries (``"kinetics"``, ...).
        num_classes: K, the length of multi-hot labels.
        multilabel: Charades-style multi-hot labels (float32 (B, K)) instead of int64 (B,).
        seed, epoch: the data order and the augmentation are pure functions of these (and rank, workers).
        epoch_batches: batches per ``iter()``, equal on every rank.
        rank, world_size: this process's place among the training processes (explicit: no env lookup).
        start_batch: batches already consumed in ``epoch`` (resume); skipped before decoding.

    Yields batches ``{"video": uint8 (B, 3, T, H, W), "label", "dataset", "key"}`` (+ ``"aug"`` with
    ``augment_on: device``; H = W = size with ``cpu``): see the module docstring.
    """
    return ClipLoader(
        urls,
        lcfg,
        dataset=dataset,
        num_classes=num_classes,
        multilabel=multilabel,
        seed=seed,
        epoch_batches=epoch_batches,
        rank=rank,
        world_size=world_size,
        epoch=epoch,
        start_batch=start_batch,
    )


def eval_dataset(
    urls: list[str],
    lcfg: LoaderConfig,
    *,
    dataset: str,
    num_classes: int,
    multilabel: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> wds.DataPipeline:
    """The evaluation pipeline (an IterableDataset of batches); :func:`eval_loader` wraps it."""
    if not 0 <= rank < world_size:
        raise ValueError(f"{dataset}: rank {rank} not in [0, {world_size})")
    return wds.DataPipeline(
        wds.SimpleShardList(list(urls)),
        _split_by_rank(rank, world_size),
        _split_by_worker,
        _ensure_handlers,
        tar_samples(),
        _EvalSample(lcfg, num_classes, multilabel),
        _batched(lcfg.batch_size, _Collate(dataset), partial=True),
    )


def eval_loader(
    urls: list[str],
    lcfg: LoaderConfig,
    *,
    dataset: str,
    num_classes: int,
    multilabel: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> wds.WebLoader:
    """The evaluation loader: every sample of ``urls`` exactly once across ranks x workers, in views.

    Each clip gives ``lcfg.temporal_views * lcfg.spatial_views`` entries with the same ``key`` and
    ``view`` = v * S + s. Batches: ``{"video": uint8 (B, 3, T, size, size), "label" (video-level),
    "dataset", "key", "view"}``; the last batch of each worker may be smaller. Gather outputs by ``key``
    across ranks and check them with :func:`check_complete`. A sample that does not decode raises
    :class:`~tubevit.data.video.DecodeError` naming the shard and key.
    """
    register_fsspec_handlers()
    return wds.WebLoader(
        eval_dataset(
            urls,
            lcfg,
            dataset=dataset,
            num_classes=num_classes,
            multilabel=multilabel,
            rank=rank,
            world_size=world_size,
        ),
        batch_size=None,
        collate_fn=_as_is,
        num_workers=lcfg.workers,
        worker_init_fn=_worker_init if lcfg.workers else None,
        pin_memory=bool(lcfg.workers) and torch.cuda.is_available(),  # workers: 0 pins in the collate
    )


# --------------------------------------------------------------------------------------------- joint
def dataset_for_step(step: int, weights: Mapping[str, float], seed: int) -> str:
    """The dataset of optimiser step ``step``: ``random.Random(seed + step)``, weighted (names sorted)."""
    names = sorted(weights)
    return random.Random(seed + step).choices(names, weights=[weights[n] for n in names])[0]


def step_counts(weights: Mapping[str, float], seed: int, stop: int, start: int = 0) -> dict[str, int]:
    """How many of the steps [start, stop) go to each dataset (e.g. the ``start_batch`` of a resume)."""
    counts = dict.fromkeys(sorted(weights), 0)
    for k in range(start, stop):
        counts[dataset_for_step(k, weights, seed)] += 1
    return counts


class JointBatches:
    """Alternate datasets by weight: step k's batches come from :func:`dataset_for_step` ``(k)``.

    Yields ``batches_per_step`` consecutive batches per step (all micro-batches of one optimiser step come
    from one dataset), starting at ``start_step``; forever, re-iterating a loader when it ends (the next
    epoch of a :class:`ClipLoader`). Every batch is the loader's dict and names its dataset.
    For a resume at step k, build each loader with ``start_batch = step_counts(weights, seed, k)[name] *
    batches_per_step`` (per-epoch arithmetic aside).
    """

    def __init__(
        self,
        loaders: Mapping[str, Iterable[dict]],
        weights: Mapping[str, float],
        seed: int,
        *,
        start_step: int = 0,
        batches_per_step: int = 1,
    ):
        missing = sorted(set(weights) - set(loaders))
        if missing:
            raise ValueError(f"weights name datasets without a loader: {missing}")
        if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
            raise ValueError(f"weights must be >= 0 with a positive sum, got {dict(weights)}")
        self.loaders = dict(loaders)
        self.weights = {k: float(v) for k, v in weights.items() if v > 0}
        self.seed = seed
        self.start_step = start_step
        self.batches_per_step = batches_per_step

    def __iter__(self) -> Iterator[dict]:
        iterators: dict[str, Iterator[dict]] = {}
        step = self.start_step
        while True:
            name = dataset_for_step(step, self.weights, self.seed)
            for _ in range(self.batches_per_step):
                if name not in iterators:
                    iterators[name] = iter(self.loaders[name])
                try:
                    batch = next(iterators[name])
                except StopIteration:
                    iterators[name] = iter(self.loaders[name])
                    try:
                        batch = next(iterators[name])
                    except StopIteration:
                        raise RuntimeError(f"{name}: the loader yields no batches") from None
                if batch.get("dataset", name) != name:
                    raise RuntimeError(f"loader {name!r} yielded a batch of {batch['dataset']!r}")
                yield batch
            step += 1

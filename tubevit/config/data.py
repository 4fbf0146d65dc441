"""Configs of the data stages and the loader: ``datasets.<name>``, ``reencode``, ``shard``, ``loader``.

Units: fps in frames per second, sizes in pixels, times in seconds, byte counts in bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from tubevit.config.base import ConfigError, check

DATASET_NAMES = ("kinetics", "charades", "ssv2", "imagenet")

Format = Literal["kinetics", "charades", "ssv2", "imagenet"]
Source = Literal["synthetic", "local", "http", "youtube"]
AugmentOn = Literal["auto", "cpu", "device"]
AUGMENT_ON = ("auto", "cpu", "device")

# Split names as the real datasets spell them -> the pipeline's names (the adapters normalise the same way).
# Kinetics-400 uses "val", Kinetics-700(-2020) "validate"; Charades calls its held-out split "test" (it is the
# validation set of every paper); SSv2 "validation". Kinetics' own "test" split stays "test" (labels are
# absent in the Kinetics-600 release), so it is not mixed into "val".
SPLIT_ALIASES: dict[str, str] = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validate": "val",
    "validation": "val",
    "test": "test",
}


def normalise_split(name: str, where: str = "split") -> str:
    """Map a split name (``validate``, ``validation``, ``val``...) to ``train``/``val``/``test``.

    Raises:
        ValueError: an unknown split name; the message names ``where`` and the known names.
    """
    key = str(name).strip().lower()
    if key not in SPLIT_ALIASES:
        raise ValueError(f"{where}: unknown split {name!r}; known: {', '.join(sorted(SPLIT_ALIASES))}")
    return SPLIT_ALIASES[key]


def _is_http(url: str) -> bool:
    return url.lower().startswith(("http://", "https://"))


@dataclass(frozen=True)
class SyntheticConfig:
    """Size of a generated (embedded-default) dataset: ``source: synthetic``."""

    train: int = 600  # items in the training split
    val: int = 120  # items in the validation split
    size: int = 64  # frame side in pixels (square), before reencode's short-side scaling
    seconds: float = 2.0  # clip length (Charades-like: the whole video; ~30 s at paper scale)
    fps: float = 30.0  # source frame rate
    seed: int = 0
    # Kinetics- and SSv2-like videos: a new shot (new object, shade, speed, background; same class) every
    # this many seconds, so one long video holds several independent examples. 0 = one shot.
    shot_seconds: float = 0.0

    def __post_init__(self) -> None:
        check(self.train >= 1, "train", f"must be >= 1, got {self.train}")
        check(self.val >= 1, "val", f"must be >= 1, got {self.val}")
        check(self.size >= 16, "size", f"must be >= 16 pixels, got {self.size}")
        check(self.seconds > 0, "seconds", f"must be > 0, got {self.seconds}")
        check(self.fps > 0, "fps", f"must be > 0, got {self.fps}")
        check(self.shot_seconds >= 0, "shot_seconds", f"must be >= 0 seconds, got {self.shot_seconds}")


@dataclass(frozen=True)
class DatasetConfig:
    """One dataset: where it comes from, how it is re-encoded, and how clips are sampled.

    ``format`` picks the annotation adapter (the real dataset's format; synthetic data is written in it).
    ``source`` picks the download method; ``uri`` is a folder (local), a list of http(s) URLs of files or
    archives (http), or unused (synthetic, youtube: the annotation gives the ids).
    """

    format: Format
    source: Source = "synthetic"
    uri: tuple[str, ...] = ()  # local folder or http(s) URLs
    sha256: tuple[str, ...] = ()  # one per URL where known ('' = unknown)
    annotations: tuple[str, ...] = ()  # http(s) URLs of annotation files (real datasets), if separate
    trimmed: bool = False  # Kinetics: files already hold [time_start, time_end]
    fps: float = 15.0  # re-encode frame rate (Kinetics 15, Charades 6, SSv2 24); unused for images
    short_side: int = 256  # re-encode short side in pixels
    splits: tuple[str, ...] = ("train", "val")  # the adapter's split names after normalisation
    multilabel: bool = False  # Charades: multi-hot labels
    num_classes: int = 0  # 0 = from the data (class map); >0 checks it
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    # The data stages (download, reencode, shard) fail when more than this fraction of a split's items
    # fail (YouTube-sourced Kinetics loses a few percent a year). A split with no usable item always fails.
    failure_budget: float = 0.1
    # Caps on untrusted archives (download, http): members per archive and bytes extracted per archive.
    max_archive_members: int = 2_000_000
    max_extract_bytes: int = 2 << 40  # 2 TiB

    def __post_init__(self) -> None:
        splits = []
        for i, name in enumerate(self.splits):
            try:
                split = normalise_split(name, f"splits[{i}]")
            except ValueError as exc:
                raise ConfigError(f"splits[{i}]", str(exc).split(": ", 1)[1]) from None
            check(split not in splits, f"splits[{i}]", f"{name!r} names split {split!r} twice")
            splits.append(split)
        object.__setattr__(self, "splits", tuple(splits))
        check(self.fps > 0, "fps", f"must be > 0 frames per second, got {self.fps}")
        check(self.short_side >= 8, "short_side", f"must be >= 8 pixels, got {self.short_side}")
        check(len(self.splits) >= 1, "splits", "must name at least one split")
        check(self.num_classes >= 0, "num_classes", f"must be >= 0, got {self.num_classes}")
        check(self.source not in ("local",) or len(self.uri) == 1, "uri", "source 'local' needs one folder")
        check(self.source != "http" or len(self.uri) >= 1, "uri", "source 'http' needs at least one URL")
        for i, url in enumerate(self.uri):
            if self.source == "http":
                check(_is_http(url), f"uri[{i}]", f"must be an http(s) URL, got {url!r}")
        for i, url in enumerate(self.annotations):
            check(_is_http(url), f"annotations[{i}]", f"must be an http(s) URL, got {url!r}")
        check(
            0.0 <= self.failure_budget <= 1.0,
            "failure_budget",
            f"must be a fraction in [0, 1], got {self.failure_budget}",
        )
        check(
            self.max_archive_members >= 1,
            "max_archive_members",
            f"must be >= 1, got {self.max_archive_members}",
        )
        check(
            self.max_extract_bytes >= 1,
            "max_extract_bytes",
            f"must be >= 1 byte, got {self.max_extract_bytes}",
        )
        check(
            not self.sha256 or len(self.sha256) == len(self.uri),
            "sha256",
            f"needs one entry per uri ({len(self.uri)}), got {len(self.sha256)}",
        )

    @property
    def is_image(self) -> bool:
        return self.format == "imagenet"


@dataclass(frozen=True)
class ReencodeConfig:
    """ffmpeg settings shared by every video dataset (fps and short side are per dataset)."""

    preset: str = "veryfast"  # x264 preset
    crf: int = 23  # x264 constant rate factor
    jpeg_quality: int = 90  # images: PIL JPEG quality
    workers: int = 2  # parallel ffmpeg jobs (each -threads 1)
    dask_address: str | None = None  # a Dask scheduler address: run tasks on that cluster
    chunk_size: int = 8  # items per Prefect task (one task run per item swamps the server)
    # Caps on untrusted media: an item over one fails with the reason (failures.jsonl), the stage goes on.
    max_side: int = 8192  # pixels: a source (video or image) whose long side is larger is refused
    max_duration_s: float = 3600.0  # seconds of video one item may encode (the trim window, or the file)
    probe_timeout_s: float = 30.0  # seconds one probe (PyAV or ffprobe) may take
    max_encode_s: float = 3600.0  # seconds one ffmpeg run may take (also: 120 s + 10 x the item's duration)

    def __post_init__(self) -> None:
        check(self.max_side >= 16, "max_side", f"must be >= 16 pixels, got {self.max_side}")
        check(self.max_duration_s > 0, "max_duration_s", f"must be > 0 seconds, got {self.max_duration_s}")
        check(self.probe_timeout_s > 0, "probe_timeout_s", f"must be > 0 seconds, got {self.probe_timeout_s}")
        check(self.max_encode_s > 0, "max_encode_s", f"must be > 0 seconds, got {self.max_encode_s}")
        check(0 <= self.crf <= 51, "crf", f"must be in [0, 51], got {self.crf}")
        check(1 <= self.jpeg_quality <= 100, "jpeg_quality", f"must be in [1, 100], got {self.jpeg_quality}")
        check(self.workers >= 1, "workers", f"must be >= 1, got {self.workers}")
        check(self.chunk_size >= 1, "chunk_size", f"must be >= 1, got {self.chunk_size}")


@dataclass(frozen=True)
class ShardConfig:
    """WebDataset shard writing."""

    target_bytes: int = 64 * 1024 * 1024  # close a shard once it reaches this size
    min_shards: int = 2  # at least nodes x workers shards per split
    seed: int = 0  # sample order

    def __post_init__(self) -> None:
        check(self.target_bytes >= 1024, "target_bytes", f"must be >= 1024 bytes, got {self.target_bytes}")
        check(self.min_shards >= 1, "min_shards", f"must be >= 1, got {self.min_shards}")


@dataclass(frozen=True)
class LoaderConfig:
    """How clips are read from shards for one dataset (training or evaluation)."""

    frames: int = 16  # T, frames per clip at the dataset's fps
    size: int = 64  # crop side in pixels
    batch_size: int = 16  # per optimiser micro-batch (per rank)
    workers: int = 0  # DataLoader workers per rank
    shuffle_buffer: int = 256  # sample shuffle buffer (training)
    crop_scale: tuple[float, float] = (0.25, 1.0)  # RandomResizedCrop scale
    crop_ratio: tuple[float, float] = (0.75, 4 / 3)  # RandomResizedCrop aspect ratio
    randaugment: bool = True
    randaugment_ops: int = 2
    randaugment_magnitude: int = 10  # on the 0..10 scale (num_magnitude_bins=11)
    temporal_views: int = 1  # evaluation: uniform temporal views
    spatial_views: int = 1  # evaluation: 1 (centre) or 3 crops along the long side
    # Training: keep each decoded video (all frames, uint8) in memory, up to this many MiB per loader, so
    # later epochs only slice a window and crop. 0 = off (decode every sample). Effective with workers: 0
    # (the cache lives in the training process; workers > 0 start each epoch from an empty copy).
    cache_mb: int = 0
    # Training: where the random-resized crop and RandAugment run. "cpu": in the loader workers (batches
    # hold the augmented uint8 clips); "device": batched on the training device (the workers only decode
    # and draw each sample's parameters; batches hold the decoded frames and the packed parameters).
    # "auto": "device" when training on CUDA, else the CPU choice measured fastest
    # (tubevit.data.augment.resolve_augment_on).
    augment_on: AugmentOn = "auto"

    def __post_init__(self) -> None:
        check(self.frames >= 1, "frames", f"must be >= 1, got {self.frames}")
        check(self.size >= 8, "size", f"must be >= 8 pixels, got {self.size}")
        check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        check(self.workers >= 0, "workers", f"must be >= 0, got {self.workers}")
        check(0 < self.crop_scale[0] <= self.crop_scale[1] <= 1, "crop_scale", f"bad range {self.crop_scale}")
        check(0 < self.crop_ratio[0] <= self.crop_ratio[1], "crop_ratio", f"bad range {self.crop_ratio}")
        check(0 <= self.randaugment_magnitude <= 10, "randaugment_magnitude", "must be in [0, 10]")
        check(self.temporal_views >= 1, "temporal_views", f"must be >= 1, got {self.temporal_views}")
        check(self.spatial_views in (1, 3), "spatial_views", f"must be 1 or 3, got {self.spatial_views}")
        check(self.cache_mb >= 0, "cache_mb", f"must be >= 0 MiB, got {self.cache_mb}")
        check(
            self.augment_on in AUGMENT_ON,
            "augment_on",
            f"must be one of {', '.join(AUGMENT_ON)}, got {self.augment_on!r}",
        )

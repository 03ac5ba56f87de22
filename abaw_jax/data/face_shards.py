"""TFDS face shards: image trees -> quality-filtered ArrayRecord shards of JPEG faces.

`build_face_shards({"affectnet": "/data/affectnet", ...}, data_dir)` walks every root recursively for images
(`media.video.IMAGE_EXTENSIONS`, any case), following symlinked folders (each real folder once), drops files that
fail the quality filter, and writes the rest with a `tfds.core.GeneratorBasedBuilder` in the ArrayRecord format
to `<data_dir>/face_shards/1.0.0/`. Each record holds the encoded JPEG (`image`), the `source` name and a stable
`id` "<source>/<relative path>". JPEGs are stored byte for byte; other images, and JPEGs that do not end in an
EOI marker, are re-encoded
(quality 95) so that every stored record is a complete JPEG. 16-bit PNGs are scaled to 8 bits (not
clipped, which would turn them white).

The quality filter gives each dropped file the first reason that applies, checked in this order:
  duplicate  - the file's bytes equal (SHA-256) those of a file seen earlier;
  corrupt    - it cannot be read or decoded completely: random bytes, a truncated file, a dangling
               symlink, or a JPEG whose decoding makes libjpeg warn (a file cut short but ending in an
               EOI marker decodes "successfully" with grey rows; libjpeg's warning is treated as an error);
  too_small  - min(height, width) < min_face_size;
  blurry     - variance of the Laplacian of the grey image (3x3 kernel, OpenCV's reflect-101 border,
               at the stored resolution) < min_blur_var.
The counts per reason and every dropped id go to `<data_dir>/face_shards/1.0.0/quality_report.json`
and are logged.

Writing and reading need no TensorFlow: the Image feature receives encoded bytes, and
`load_face_source` returns a `tfds` ArrayRecord data source that skips image decoding, so records are
`{"image": <JPEG bytes>, "id": bytes, "source": bytes}` for the grain pipeline to decode; a shard that cannot be
read (truncated, overwritten) is a `DamagedShardError` naming the file and how to rebuild it.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import io
import json
import os
import pathlib
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import cv2
import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from PIL import Image

from abaw_jax.media.jpeg import CorruptImageError, check_jpeg, is_complete_jpeg
from abaw_jax.media.video import IMAGE_EXTENSIONS
from abaw_jax.runtime.errors import ConfigError, ExplainedError

DATASET_NAME = "face_shards"
DATASET_VERSION = "1.0.0"
REPORT_FILENAME = "quality_report.json"
DROP_REASONS = ("duplicate", "corrupt", "too_small", "blurry")
_REENCODE_QUALITY = 95
_CHECK_CHUNK = 256


@dataclasses.dataclass(frozen=True)
class QualityFilter:
    """Thresholds of the face quality filter (see the module docstring for the order of checks)."""

    min_face_size: int = 64
    min_blur_var: float = 20.0


@dataclasses.dataclass
class QualityReport:
    """What a build kept and dropped, with the ids of every dropped file per reason."""

    image_roots: dict[str, str]
    quality_filter: QualityFilter
    kept: int = 0
    dropped: dict[str, list[str]] = dataclasses.field(default_factory=lambda: {reason: [] for reason in DROP_REASONS})

    @property
    def scanned(self) -> int:
        return self.kept + sum(len(ids) for ids in self.dropped.values())

    @property
    def drop_counts(self) -> dict[str, int]:
        return {reason: len(ids) for reason, ids in self.dropped.items()}

    def summary(self) -> str:
        counts = ", ".join(f"{reason}={n}" for reason, n in self.drop_counts.items())
        return f"scanned {self.scanned}, kept {self.kept}, dropped {counts}"

    def table(self) -> str:
        """Kept/dropped/scanned counts, one per line, for printing at the end of a build."""
        rows = [("kept", self.kept)] + list(self.drop_counts.items()) + [("scanned", self.scanned)]
        return "\n".join(f"{label:>10}  {count:>10,d}" for label, count in rows)

    def to_json(self) -> dict[str, Any]:
        return {
            "image_roots": self.image_roots,
            "quality_filter": dataclasses.asdict(self.quality_filter),
            "scanned": self.scanned,
            "kept": self.kept,
            "drop_counts": self.drop_counts,
            "dropped": self.dropped,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> QualityReport:
        return cls(
            image_roots=dict(data["image_roots"]),
            quality_filter=QualityFilter(**data["quality_filter"]),
            kept=int(data["kept"]),
            dropped={reason: list(data["dropped"][reason]) for reason in DROP_REASONS},
        )


class NoFacesError(ExplainedError, ValueError):
    """No image of the roots passed the quality filter."""


_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def eight_bit(image: Image.Image) -> Image.Image:
    """A 16-bit grey PIL image scaled to 8 bits (PIL's own convert clips at 255); others unchanged."""
    if image.mode not in _SIXTEEN_BIT_MODES:
        return image
    values = np.asarray(image, np.float64)
    return Image.fromarray(np.clip(np.round(values / 257.0), 0, 255).astype(np.uint8), "L")


def laplacian_variance(gray: np.ndarray) -> float:
    """Variance of the 3x3 Laplacian of a 2-D grey image (the usual blur measure: low = blurry)."""
    return float(cv2.Laplacian(gray, cv2.CV_64F).var())


def decode_grey(encoded: bytes) -> np.ndarray:
    """Decodes image bytes completely into a uint8 grey image; raises CorruptImageError otherwise."""
    check_jpeg(encoded)
    try:
        with Image.open(io.BytesIO(encoded)) as image:
            image.load()
            return np.asarray(eight_bit(image).convert("L"))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise CorruptImageError(str(e)) from e


def drop_reason(encoded: bytes, quality_filter: QualityFilter) -> str | None:
    """Returns why a not-yet-seen image fails the filter ('corrupt', 'too_small', 'blurry') or None."""
    try:
        gray = decode_grey(encoded)
    except CorruptImageError:
        return "corrupt"
    if min(gray.shape) < quality_filter.min_face_size:
        return "too_small"
    if laplacian_variance(gray) < quality_filter.min_blur_var:
        return "blurry"
    return None


def as_complete_jpeg(encoded: bytes) -> bytes:
    """Returns the bytes unchanged when they are a JPEG ending in EOI, else a re-encoded RGB JPEG."""
    if is_complete_jpeg(encoded):
        return encoded
    with Image.open(io.BytesIO(encoded)) as image:
        buffer = io.BytesIO()
        eight_bit(image).convert("RGB").save(buffer, format="JPEG", quality=_REENCODE_QUALITY)
    return buffer.getvalue()


def list_image_files(root: pathlib.Path) -> list[pathlib.Path]:
    """All image files (`IMAGE_EXTENSIONS`, any case) below `root`, sorted so that ids and order are stable.

    Symlinked folders are followed, each real folder once (a link back up the tree is not a loop), and
    symlinked files are listed even when dangling, so that the quality filter counts them as corrupt.
    """
    files, seen = [], set()
    for folder, subfolders, names in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            subfolders.clear()
            continue
        seen.add(real)
        subfolders.sort()
        files.extend(
            pathlib.Path(folder, name) for name in names if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS
        )
    return sorted(files)


class FaceShards(tfds.core.GeneratorBasedBuilder):
    """Quality-filtered faces from one or more image trees, as JPEG bytes with source and id."""

    VERSION = tfds.core.Version(DATASET_VERSION)
    RELEASE_NOTES = {DATASET_VERSION: "JPEG faces with source and id; size, blur and duplicate filter."}
    # tfds 4.9.10 locates checksum files next to a packaged builder's code through the
    # `importlib_resources` backport, which it only installs on Python < 3.9. Local image trees have
    # no download checksums, so there is no code path to look beside.
    code_path = None

    def __init__(
        self,
        *,
        image_roots: Mapping[str, str | os.PathLike],
        quality_filter: QualityFilter,
        log_every: int = 1000,
        num_threads: int = 4,
        **kwargs,
    ):
        self._image_roots = {name: pathlib.Path(root) for name, root in image_roots.items()}
        self._quality_filter = quality_filter
        self._log_every = log_every
        self._num_threads = num_threads
        self.report = QualityReport(
            image_roots={name: str(root) for name, root in self._image_roots.items()}, quality_filter=quality_filter
        )
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__.split("\n\n")[0],
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(encoding_format="jpeg"),
                    "source": tfds.features.Text(),
                    "id": tfds.features.Text(),
                }
            ),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # The inputs are local image trees.
        return {"train": self._generate_examples()}

    def _generate_examples(self) -> Iterator[tuple[str, dict[str, Any]]]:
        files = [(name, root, path) for name, root in self._image_roots.items() for path in list_image_files(root)]
        logging.info("Found %d image files in %d roots.", len(files), len(self._image_roots))
        seen_digests = set()
        start = time.monotonic()
        for count, ((name, root, path), (encoded, digest, reason)) in enumerate(
            zip(files, self._checked(files)), start=1
        ):
            example_id = f"{name}/{path.relative_to(root).as_posix()}"
            if digest in seen_digests:
                reason = "duplicate"
            seen_digests.add(digest)
            if reason is None:
                self.report.kept += 1
                yield example_id, {"image": as_complete_jpeg(encoded), "source": name, "id": example_id}
            else:
                self.report.dropped[reason].append(example_id)
            if count % self._log_every == 0 or count == len(files):
                rate = count / max(time.monotonic() - start, 1e-9)
                logging.info("%d/%d files (%.0f/s): %s", count, len(files), rate, self.report.summary())
        if not self.report.kept:
            raise NoFacesError(
                f"No image passed the quality filter ({self.report.summary()}); "
                f"roots: {self.report.image_roots}, filter: {self._quality_filter}."
            )

    def _checked(
        self, files: Sequence[tuple[str, pathlib.Path, pathlib.Path]]
    ) -> Iterator[tuple[bytes, bytes, str | None]]:
        """(bytes, SHA-256, drop reason other than duplicate) per file, in file order."""
        # PIL and OpenCV release the GIL while decoding, so threads check files in parallel; chunks
        # bound the encoded bytes in flight.
        with concurrent.futures.ThreadPoolExecutor(self._num_threads) as pool:
            for chunk_start in range(0, len(files), _CHECK_CHUNK):
                yield from pool.map(self._check, files[chunk_start : chunk_start + _CHECK_CHUNK])

    def _check(self, file: tuple[str, pathlib.Path, pathlib.Path]) -> tuple[bytes, bytes, str | None]:
        try:
            encoded = file[2].read_bytes()
        except OSError as e:  # a dangling symlink, a file that vanished or cannot be read
            logging.warning("Cannot read %s (%s): counted as corrupt", file[2], e)
            return b"", hashlib.sha256(os.fsencode(file[2])).digest(), "corrupt"
        return encoded, hashlib.sha256(encoded).digest(), drop_reason(encoded, self._quality_filter)


def dataset_dir(data_dir: str | os.PathLike) -> pathlib.Path:
    """The versioned folder that holds the shards, dataset_info.json and the quality report."""
    return pathlib.Path(data_dir) / DATASET_NAME / DATASET_VERSION


def build_face_shards(
    image_roots: Mapping[str, str | os.PathLike],
    data_dir: str | os.PathLike,
    *,
    quality_filter: QualityFilter = QualityFilter(),
    overwrite: bool = False,
    log_every: int = 1000,
    num_threads: int = 4,
) -> QualityReport:
    """Writes the filtered faces of `image_roots` (source name -> folder) as ArrayRecord shards.

    An existing build in `data_dir` made from the same roots and filter is reused (its report is
    returned); a different one needs `overwrite=True`.
    """
    roots = _validated_roots(image_roots)
    report_path = dataset_dir(data_dir) / REPORT_FILENAME
    if report_path.exists() and not overwrite:
        existing = QualityReport.from_json(json.loads(report_path.read_text()))
        if existing.image_roots == roots and existing.quality_filter == quality_filter:
            logging.info("Reusing face shards in %s: %s", report_path.parent, existing.summary())
            return existing
        raise FileExistsError(
            f"{report_path.parent} already holds face shards built from roots {existing.image_roots} "
            f"with {existing.quality_filter}; asked for roots {roots} with {quality_filter}. "
            "Pass overwrite=True (--overwrite) to rebuild, or use another data_dir."
        )
    builder = FaceShards(
        image_roots=roots,
        quality_filter=quality_filter,
        log_every=log_every,
        num_threads=num_threads,
        data_dir=os.fspath(data_dir),
        file_format="array_record",
    )
    # Without a matching report any files there are stale or partial, so always regenerate.
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(download_mode=tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS)
    )
    report_path.write_text(json.dumps(builder.report.to_json(), indent=1))
    logging.info("Face shards in %s: %s", report_path.parent, builder.report.summary())
    return builder.report


class DamagedShardError(ExplainedError, RuntimeError):
    """A face shard file that array_record cannot read (truncated, overwritten, a failed copy); names it."""


class FaceSource(Sequence):
    """The shards' records (a tfds ArrayRecord data source) with a damaged shard reported by its file name.

    array_record reports a damaged file as a RuntimeError about Riegeli chunks that names no file; a grain
    worker raises it from deep inside a batch. Picklable, so grain workers get their own copy.
    """

    def __init__(
        self,
        source: Sequence[dict[str, Any]],
        directory: pathlib.Path,
        files: Sequence[str],
        shard_lengths: Sequence[int],
        built_from: Mapping[str, str],
    ):
        self._source, self._directory, self._files = source, directory, list(files)
        self._ends = np.cumsum(np.asarray(shard_lengths, np.int64))
        self._built_from = dict(built_from)

    def __len__(self) -> int:
        return len(self._source)

    def __repr__(self) -> str:
        return f"FaceSource({self._directory}, {len(self)} faces in {len(self._files)} shards)"

    def read_each_shard(self) -> None:
        """Reads the first record of every shard: a damaged index or footer fails here, before any training."""
        for first in (0, *self._ends[:-1]):
            if first < len(self):
                self[int(first)]

    def __getitem__(self, index: int) -> dict[str, Any]:  # type: ignore[override]
        try:
            return self._source[index]
        except RuntimeError as e:  # array_record's only error type for an unreadable file
            shard = self._files[min(int(np.searchsorted(self._ends, index, side="right")), len(self._files) - 1)]
            roots = ",".join(f"{name}={root}" for name, root in self._built_from.items()) or "<name>=<folder>,..."
            raise DamagedShardError(
                f"{self._directory / shard}: damaged face shard, record {index} cannot be read ({e}); restore "
                f"the file, or rebuild the shards: python -m data_prep.build_face_shards --image_roots={roots} "
                f"--data_dir={self._directory.parent.parent} --overwrite"
            ) from e


def load_face_source(data_dir: str | os.PathLike, split: str = "train") -> FaceSource:
    """Random-access source of `{"image": JPEG bytes, "id": bytes, "source": bytes}` records.

    The first record of every shard is read here, so a shard whose index or footer is damaged stops the run
    before training (a DamagedShardError naming the file); damage inside a shard is named when it is read.
    """
    directory = dataset_dir(data_dir)
    if not (directory / "dataset_info.json").exists():
        raise FileNotFoundError(
            f"No face shards in {directory} (expected dataset_info.json there); "
            "build them with `python -m data_prep.build_face_shards`."
        )
    builder = tfds.builder_from_directory(os.fspath(directory))
    source = builder.as_data_source(split=split, decoders={"image": tfds.decode.SkipDecoding()})
    split_info = builder.info.splits[split]
    report_path = directory / REPORT_FILENAME
    built_from = (
        QualityReport.from_json(json.loads(report_path.read_text())).image_roots if report_path.is_file() else {}
    )
    faces = FaceSource(source, directory, split_info.filenames, split_info.shard_lengths, built_from)
    faces.read_each_shard()
    return faces


def parse_image_roots(spec: str | Sequence[str]) -> dict[str, str]:
    """Parses "name=path,name=path" (or a list of "name=path") into an ordered mapping."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    roots = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"Expected image roots as name=path, found {item!r} in {spec!r}.")
        if name in roots:
            raise ConfigError(f"Source name {name!r} is given twice in {spec!r}.")
        roots[name] = path
    return roots


def _validated_roots(image_roots: Mapping[str, str | os.PathLike]) -> dict[str, str]:
    if not image_roots:
        raise ConfigError("Expected at least one image root (source name -> folder), found none.")
    roots = {}
    for name, root in image_roots.items():
        if not name or "/" in name:
            raise ConfigError(f"Source names must be non-empty and contain no '/', found {name!r}.")
        path = pathlib.Path(root).resolve()
        if not path.is_dir():
            found = "a file" if path.is_file() else "nothing"
            raise NotADirectoryError(f"Image root {name}={root} must be a directory, found {found} there.")
        roots[name] = str(path)
    return roots

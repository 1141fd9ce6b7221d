"""The artifact bundle: one immutable directory per index build, described and verified by ``manifest.json``.

A bundle holds everything a query process needs and nothing it must not trust blindly::

    manifest.json            written last: format version, dimensions, metric, FAISS factory and search
                             parameters, item counts, every file's size and SHA-256, resolved configs, versions,
                             and the SHA-256 of its own fields (``manifest_sha256``)
    index.faiss              the FAISS index; its ids are item *slots* (rows of items.parquet)
    items.parquet            the raw item table (id, attributes, title): display, filters, slot -> item id
    active.npy               [num_slots] bool: False for removed (or replaced) items
    item_embeddings.npy      [num_slots, dim] float32 item-tower embeddings (exact search, updates, rebuilds)
    student_items/*.npy      [num_slots, ...] item-side parts of the ranking student, precomputed at build time
    query_tower/, item_tower/, student/   numpy weights (model.json + arrays.npz) of the serving models
    savedmodel/              the TensorFlow SavedModel exports they were converted from (reference path)
    encoders/                the fitted feature encoders
    users.parquet            optional user attributes, looked up for known users at query time

Writing goes to a hidden temporary sibling that is renamed into place only after ``manifest.json`` is written,
so the target name never shows a partial build; a failed build removes its temporary directory (a killed one
leaves it, hidden and named ``.<name>.tmp-<hex>``). Overwriting swaps the new build and the previous one in one
system call where the OS can (Linux ``renameat2(RENAME_EXCHANGE)``), so the target name always holds one complete
build. Every array is ``.npy`` loaded with ``allow_pickle=False``; nothing on a load path unpickles.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import errno
import hashlib
import json
import logging
import os
import shutil
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

FORMAT = "cascade-index"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
MANIFEST_DIGEST = "manifest_sha256"
METRIC = "inner_product"


class ManifestError(ValueError):
    """A bundle that is incomplete, corrupted or mixes files of different builds."""


@dataclass(frozen=True)
class FileEntry:
    """Size and SHA-256 of one bundle file."""

    bytes: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """What a bundle holds (``manifest.json``).

    Attributes:
        build_id: Unique id of this build (an update writes a new bundle with a new id and its parent's id).
        created: UTC creation time, ISO 8601.
        embedding_dim: Width of the query and item embeddings.
        metric: ``"inner_product"`` (embeddings are L2-normalised: cosine similarity).
        index: FAISS description: ``factory``, ``nprobe``, ``ef_search``, ``nlist``, ``ntotal``.
        items: ``num_slots`` (rows of items.parquet), ``num_active`` (searchable items), ``id_kind``
            (``"int"`` or ``"str"``), ``columns`` (attribute columns), ``filters`` (filterable fields and kinds).
        models: Serving model descriptions (input keys, widths) and which trained mode they come from.
        files: Relative path -> `FileEntry` of every file in the bundle except the manifest.
        config: The resolved configurations (index, cascade training, encoders).
        versions: Library versions of the build.
        parent_build_id: The build this bundle was updated from, if any.
    """

    embedding_dim: int
    index: dict[str, Any]
    items: dict[str, Any]
    models: dict[str, Any]
    files: dict[str, FileEntry]
    build_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    metric: str = METRIC
    config: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    parent_build_id: str | None = None
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "format_version": self.format_version,
            "build_id": self.build_id,
            "parent_build_id": self.parent_build_id,
            "created": self.created,
            "embedding_dim": self.embedding_dim,
            "metric": self.metric,
            "index": self.index,
            "items": self.items,
            "models": self.models,
            "files": {k: {"bytes": v.bytes, "sha256": v.sha256} for k, v in sorted(self.files.items())},
            "config": self.config,
            "versions": self.versions,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = MANIFEST_FILE) -> Manifest:
        """Parses a manifest, with `ManifestError` naming the first missing or malformed field."""
        if not isinstance(data, Mapping):
            raise ManifestError(f"{source} should hold a JSON object. Received: {type(data).__name__}")
        if data.get("format") != FORMAT:
            raise ManifestError(
                f"{source}: `format` should be {FORMAT!r}. Received: {data.get('format')!r} (not a Cascade index "
                "bundle)"
            )
        version = data.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ManifestError(f"{source}: `format_version` should be a positive integer. Received: {version!r}")
        if version > FORMAT_VERSION:
            raise ManifestError(
                f"{source}: `format_version` is {version} but this version of Cascade reads up to {FORMAT_VERSION}: "
                "upgrade Cascade to load this bundle"
            )
        # The manifest vouches for every other file; its own digest catches a changed value (an nprobe, a count)
        # that still parses. Manifests written before the digest existed have none and are read as they are; a
        # digest whose name was damaged shows up as an unknown field.
        unknown = sorted(set(data) - _MANIFEST_FIELDS)
        if unknown:
            raise ManifestError(
                f"{source} has unknown field(s) {unknown}: the manifest is corrupted or from a newer Cascade"
            )
        if MANIFEST_DIGEST in data:
            digest = manifest_digest(data)
            if data[MANIFEST_DIGEST] != digest:
                raise ManifestError(
                    f"{source} has SHA-256 {digest} over its fields but records {MANIFEST_DIGEST} "
                    f"{data[MANIFEST_DIGEST]!r}: the manifest is corrupted or was edited"
                )
        required = {
            "build_id": str,
            "created": str,
            "embedding_dim": int,
            "metric": str,
            "index": dict,
            "items": dict,
            "models": dict,
            "files": dict,
        }
        for key, kind in required.items():
            if key not in data:
                raise ManifestError(f"{source} has no `{key}` field: the manifest is incomplete")
            if not isinstance(data[key], kind) or isinstance(data[key], bool):
                raise ManifestError(
                    f"{source}: `{key}` should be a {kind.__name__}. Received: {type(data[key]).__name__}"
                )
        if data["metric"] != METRIC:
            raise ManifestError(f"{source}: `metric` should be {METRIC!r}. Received: {data['metric']!r}")
        if data["embedding_dim"] < 1:
            raise ManifestError(
                f"{source}: `embedding_dim` should be a positive integer. Received: {data['embedding_dim']}"
            )
        files = {}
        for name, entry in data["files"].items():
            if not isinstance(entry, Mapping) or not isinstance(entry.get("bytes"), int):
                raise ManifestError(f"{source}: files[{name!r}] should be {{'bytes': int, 'sha256': str}}")
            digest = entry.get("sha256")
            if not isinstance(digest, str) or len(digest) != 64:
                raise ManifestError(f"{source}: files[{name!r}].sha256 should be 64 hex digits. Received: {digest!r}")
            files[name] = FileEntry(bytes=entry["bytes"], sha256=digest)
        return cls(
            build_id=data["build_id"],
            created=data["created"],
            embedding_dim=data["embedding_dim"],
            metric=data["metric"],
            index=dict(data["index"]),
            items=dict(data["items"]),
            models=dict(data["models"]),
            files=files,
            config=dict(data.get("config") or {}),
            versions=dict(data.get("versions") or {}),
            parent_build_id=data.get("parent_build_id"),
            format_version=version,
        )


_MANIFEST_FIELDS = {
    "format",
    "format_version",
    "build_id",
    "parent_build_id",
    "created",
    "embedding_dim",
    "metric",
    "index",
    "items",
    "models",
    "files",
    "config",
    "versions",
    MANIFEST_DIGEST,
}


def manifest_digest(data: Mapping[str, Any]) -> str:
    """Hex SHA-256 of a manifest's fields (``manifest_sha256`` excepted) as canonical JSON (sorted keys, no spaces)."""
    fields = {k: v for k, v in data.items() if k != MANIFEST_DIGEST}
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def sha256_file(path: Path, *, chunk_size: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in chunks (memory stays flat for multi-GiB files)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def describe_files(directory: Path) -> dict[str, FileEntry]:
    """Size and SHA-256 of every file under ``directory`` (relative POSIX paths), the manifest excepted."""
    entries = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        relative = path.relative_to(directory).as_posix()
        if relative == MANIFEST_FILE:
            continue
        entries[relative] = FileEntry(bytes=path.stat().st_size, sha256=sha256_file(path))
    return entries


def write_manifest(directory: Path, make_manifest: Callable[[dict[str, FileEntry]], Manifest]) -> Manifest:
    """Checksums every file of ``directory``, then writes ``manifest.json`` (the last file of a bundle)."""
    manifest = make_manifest(describe_files(directory))
    data = json.loads(json.dumps(manifest.to_dict()))  # the digest covers what a reader parses back
    data[MANIFEST_DIGEST] = manifest_digest(data)
    _write_text_synced(directory / MANIFEST_FILE, json.dumps(data, indent=2, sort_keys=False))
    return manifest


def read_manifest(directory: Path) -> Manifest:
    """Reads and parses ``directory/manifest.json``.

    Raises:
        FileNotFoundError: When the directory or its manifest is missing (e.g. a build that never finished).
        ManifestError: When the manifest is not valid JSON or misses fields.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(
            f"{directory} does not exist or is not a directory: pass a bundle written by build_index"
        )
    path = directory / MANIFEST_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: {directory} is not a finished index bundle (the manifest is written last)"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ManifestError(f"{path} is not valid JSON ({e}): the manifest is corrupted") from e
    return Manifest.from_dict(data, source=str(path))


def verify_files(directory: Path, manifest: Manifest, *, checksums: bool = True) -> None:
    """Checks that the bundle's files are exactly those of its manifest, with their sizes and SHA-256.

    Raises:
        ManifestError: Naming the file and both values (size or digest) on the first disagreement, a file the
            manifest lists but the directory lacks, or a file the directory holds but the manifest does not.
    """
    directory = Path(directory)
    present = {p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file()}
    present.discard(MANIFEST_FILE)
    missing = sorted(set(manifest.files) - present)
    if missing:
        raise ManifestError(f"{directory / missing[0]} is listed in {MANIFEST_FILE} but missing from the bundle")
    extra = sorted(present - set(manifest.files))
    if extra:
        raise ManifestError(
            f"{directory / extra[0]} is not listed in {MANIFEST_FILE}: the directory mixes files of different builds"
        )
    for name, entry in sorted(manifest.files.items()):
        path = directory / name
        size = path.stat().st_size
        if size != entry.bytes:
            raise ManifestError(
                f"{path} has {size} bytes but {MANIFEST_FILE} records {entry.bytes}: the file is truncated, "
                "corrupted or from another build"
            )
        if checksums:
            digest = sha256_file(path)
            if digest != entry.sha256:
                raise ManifestError(
                    f"{path} has SHA-256 {digest} but {MANIFEST_FILE} records {entry.sha256}: the file is "
                    "corrupted or from another build"
                )


@contextmanager
def atomic_directory(target: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Yields a temporary sibling of ``target`` to fill; renames it to ``target`` when the block succeeds.

    On any exception (including KeyboardInterrupt) the temporary directory is removed and ``target`` is left as
    it was. With ``overwrite``, an existing ``target`` is swapped with the new build in one system call on Linux
    (a process killed at any point leaves ``target`` holding the previous or the new build) and the previous
    build is then deleted; elsewhere it is moved aside and replaced, which leaves a moment without ``target``.

    Raises:
        FileExistsError: When ``target`` exists and ``overwrite`` is False (checked before any work).
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists: choose a new directory or pass overwrite=True")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:12]}")
    tmp.mkdir()
    try:
        yield tmp
        _fsync_directory(tmp)
        if target.exists() and _exchange(tmp, target):
            shutil.rmtree(tmp, ignore_errors=True)  # now the previous build
        elif target.exists():
            old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:12]}")
            target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(target)
        _fsync_directory(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


_AT_FDCWD = -100  # <fcntl.h>
_RENAME_EXCHANGE = 2  # <linux/fs.h>


def _exchange(first: Path, second: Path) -> bool:
    """Swaps two existing paths atomically; False where the OS or the file system cannot (nothing moved then)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # a C library without renameat2 (glibc < 2.28)
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):  # old kernel, or a file system without it
        return False
    raise OSError(code, os.strerror(code), str(first), None, str(second))


def _write_text_synced(path: Path, text: str) -> None:
    with path.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # not supported on this platform / file system
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_DIGEST",
    "MANIFEST_FILE",
    "FileEntry",
    "Manifest",
    "ManifestError",
    "atomic_directory",
    "describe_files",
    "manifest_digest",
    "read_manifest",
    "sha256_file",
    "verify_files",
    "write_manifest",
]

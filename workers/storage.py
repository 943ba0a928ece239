"""Where sweeps are kept: a local directory or object storage, through pyarrow's filesystems.

One location holds everything a sweep keeps between processes: the spec the service wrote for
the driver (``spec.json``), the driver's progress (``status.json``) and Ray Tune's experiment
state and checkpoints (``tune/``). The service, the driver (a Ray Job on the head) and the
trials (on any node) share no local disk, so on a cluster the location is object storage
(``s3://bucket/prefix``) or a path that every node mounts (NFS).

The filesystem layer is pyarrow's, the one Ray Tune itself uses: `Location.fs` is what the
driver passes to ``RunConfig(storage_filesystem=...)`` and ``Tuner.restore``, so the trials'
checkpoints and this module's files go through the same client. A location is

* a local path (``/srv/dab/sweeps``, ``./.dab/sweeps``, ``file:///srv/dab/sweeps``): files are
  replaced atomically (temp file + rename), as before;
* ``s3://bucket/prefix``: one PUT per file, which S3 makes visible whole or not at all; an
  S3-compatible server (MinIO, moto) is named by an endpoint URL (`endpoint_url`, else
  ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``). Credentials come from the standard AWS
  variables or files of each process: they are never written into a job or a file here;
* any other URI pyarrow knows (``gs://``, ``hdfs://``), as pyarrow opens it.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from pyarrow import fs as pafs_types

#: The environment variable that carries an S3-compatible endpoint to the driver and trials.
ENDPOINT_ENV = "DAB_S3_ENDPOINT_URL"
_STANDARD_ENDPOINT_ENVS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")


class StorageError(ValueError):
    """A storage URI or endpoint that cannot be used; the message says which and why."""


def is_local(uri: str) -> bool:
    """True for a local path or a ``file://`` URI."""
    return "://" not in uri or uri.startswith("file://")


def endpoint_from_env() -> str | None:
    for name in (ENDPOINT_ENV, *_STANDARD_ENDPOINT_ENVS):
        if os.environ.get(name):
            return os.environ[name]
    return None


def _pafs() -> Any:
    # pyarrow costs 0.25 s to import: the service's settings import this module for `is_local`.
    from pyarrow import fs

    return fs


def _s3(endpoint_url: str | None) -> pafs_types.S3FileSystem:
    pafs = _pafs()
    kwargs: dict[str, Any] = {
        # A fixed region: with none, pyarrow asks AWS where the bucket is, which an
        # S3-compatible server on a private network may not answer.
        "region": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
        # a few attempts for S3's transient errors (503 SlowDown); an endpoint that is down fails
        # a write in seconds (about 9 s with 5 attempts, measured against a closed port)
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=3),
        "connect_timeout": 10,
        "request_timeout": 60,
    }
    if endpoint_url:
        parts = urlsplit(endpoint_url if "://" in endpoint_url else f"http://{endpoint_url}")
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise StorageError(
                f"S3 endpoint {endpoint_url!r}: expected http(s)://host:port, e.g. http://minio:9000"
            )
        kwargs.update(endpoint_override=parts.netloc, scheme=parts.scheme)
    return pafs.S3FileSystem(**kwargs)


@dataclass(frozen=True)
class Location:
    """A directory on a filesystem: `fs` and its path there (`path`), as given by `uri`."""

    uri: str
    fs: pafs_types.FileSystem
    path: str

    @property
    def local(self) -> bool:
        return bool(self.fs.type_name == "local")

    def child(self, *names: str) -> Location:
        """The location `names` below this one (``a/b``), on the same filesystem."""
        path = posixpath.join(self.path, *names)
        uri = posixpath.join(self.uri.rstrip("/"), *names)
        return Location(uri, self.fs, path)

    def exists(self) -> bool:
        pafs = _pafs()
        return self.fs.get_file_info(self.path).type != pafs.FileType.NotFound

    def is_dir(self) -> bool:
        pafs = _pafs()
        return self.fs.get_file_info(self.path).type == pafs.FileType.Directory

    def dirs(self) -> list[str]:
        """Names of the directories directly under this location (empty when there is none)."""
        pafs = _pafs()
        selector = pafs.FileSelector(self.path, allow_not_found=True)
        return sorted(
            i.base_name for i in self.fs.get_file_info(selector) if i.type == pafs.FileType.Directory
        )

    def files(self) -> list[str]:
        """Names of the files directly under this location (empty when there is none)."""
        pafs = _pafs()
        selector = pafs.FileSelector(self.path, allow_not_found=True)
        return sorted(i.base_name for i in self.fs.get_file_info(selector) if i.type == pafs.FileType.File)

    def read_bytes(self, limit: int | None = None) -> bytes:
        """The file's bytes (at most `limit` + 1, so a caller can tell it was longer).

        Raises:
            FileNotFoundError: there is no such file.
        """
        pafs = _pafs()
        info = self.fs.get_file_info(self.path)
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(self.uri)
        if info.type == pafs.FileType.Directory:
            raise IsADirectoryError(self.uri)
        with self.fs.open_input_stream(self.path) as f:
            return bytes(f.read(limit + 1) if limit is not None else f.readall())

    def read_json(self) -> Any | None:
        """The JSON in this file, or None when it does not exist or is not whole JSON."""
        try:
            return json.loads(self.read_bytes())
        except (FileNotFoundError, IsADirectoryError, json.JSONDecodeError, UnicodeDecodeError):
            return None

    def write_json(self, data: Any) -> None:
        """Write `data` as JSON so that a reader sees the old file or the new one, never half."""
        body = (json.dumps(data, indent=1, default=str) + "\n").encode("utf-8")
        self.write_bytes(body)

    def write_bytes(self, body: bytes) -> None:
        parent = posixpath.dirname(self.path)
        if self.local:
            # A local rename is atomic; a write in place is not.
            self.fs.create_dir(parent, recursive=True)
            tmp = posixpath.join(parent, f".{posixpath.basename(self.path)}.{uuid.uuid4().hex[:8]}.tmp")
            try:
                with self.fs.open_output_stream(tmp) as f:
                    f.write(body)
                self.fs.move(tmp, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    self.fs.delete_file(tmp)
                raise
            return
        # Object storage: one PUT replaces the object whole (a reader sees the old or the new).
        with self.fs.open_output_stream(self.path) as f:
            f.write(body)

    def delete(self) -> None:
        """Delete this directory and everything under it (nothing when it does not exist)."""
        pafs = _pafs()
        info = self.fs.get_file_info(self.path)
        if info.type == pafs.FileType.Directory:
            self.fs.delete_dir(self.path)
        elif info.type == pafs.FileType.File:
            self.fs.delete_file(self.path)

    def local_path(self) -> Path | None:
        return Path(self.path) if self.local else None

    def __str__(self) -> str:
        return self.uri


def open_location(uri: str | os.PathLike[str], endpoint_url: str | None = None) -> Location:
    """The `Location` a path or URI names.

    Args:
        uri: a local path, ``file://``, ``s3://bucket/prefix``, or another URI pyarrow opens.
        endpoint_url: an S3-compatible server (``http://minio:9000``); default: from the
            environment (`endpoint_from_env`), else AWS.

    Raises:
        StorageError: the URI cannot be opened (the message names it and why).
    """
    text = os.fspath(uri)
    if not text:
        raise StorageError("storage location is empty: expected a path or s3://bucket/prefix")
    pafs = _pafs()
    if is_local(text):
        local = Path(text[len("file://") :] if text.startswith("file://") else text).expanduser().resolve()
        return Location(str(local), pafs.LocalFileSystem(), str(local))
    parts = urlsplit(text)
    if parts.scheme == "s3":
        if not parts.netloc:
            raise StorageError(f"storage URI {text!r}: expected s3://bucket/prefix (no bucket given)")
        filesystem = _s3(endpoint_url or endpoint_from_env())
        key = posixpath.join(parts.netloc, parts.path.strip("/")).rstrip("/")
        return Location(f"s3://{key}", filesystem, key)
    try:
        other, key = pafs.FileSystem.from_uri(text)
    except (ValueError, OSError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise StorageError(f"storage URI {text!r}: {e}") from None
    return Location(text.rstrip("/"), other, key.rstrip("/"))


__all__ = ["ENDPOINT_ENV", "Location", "StorageError", "endpoint_from_env", "is_local", "open_location"]

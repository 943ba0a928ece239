"""`workers.storage`: the same operations on a local directory and on an S3 server (moto, HTTP)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from tests.s3 import S3Server
from workers.storage import ENDPOINT_ENV, Location, StorageError, is_local, open_location


@pytest.fixture(params=["local", "s3"])
def root(request: pytest.FixtureRequest, tmp_path: Path, s3: S3Server) -> Location:
    if request.param == "local":
        return open_location(tmp_path / "sweeps")
    return open_location(f"s3://{s3.bucket}/{tmp_path.name}/sweeps", s3.endpoint_url)


def test_json_roundtrip_dirs_and_delete(root: Location) -> None:
    status = root.child("abc123", "status.json")
    assert status.read_json() is None  # absent: None, not an error
    status.write_json({"state": "running", "counts": {"total": 3}})
    root.child("abc123", "tune", "run-1", "dab_trials.json").write_json({"trial_keys": ["k1"]})
    root.child("other", "spec.json").write_json({"name": "x"})

    assert status.read_json() == {"state": "running", "counts": {"total": 3}}
    assert root.dirs() == ["abc123", "other"]
    assert root.child("abc123").dirs() == ["tune"]
    assert root.child("abc123", "tune").dirs() == ["run-1"]
    assert root.child("abc123").is_dir() and status.exists() and not status.is_dir()
    assert root.child("missing").dirs() == []

    root.child("abc123").delete()
    assert root.dirs() == ["other"]
    assert status.read_json() is None


def test_read_bytes_limit_and_errors(root: Location) -> None:
    f = root.child("s", "spec.json")
    f.write_bytes(b"x" * 100)
    assert f.read_bytes(limit=10) == b"x" * 11  # one past the limit: the caller sees it is longer
    assert len(f.read_bytes()) == 100
    with pytest.raises(FileNotFoundError):
        root.child("s", "nope.json").read_bytes()
    with pytest.raises(IsADirectoryError):
        root.child("s").read_bytes()
    f.write_bytes(b'{"half": ')
    assert f.read_json() is None  # not whole JSON: None, never a partial value


def test_a_reader_never_sees_half_a_file(root: Location) -> None:
    """Writers replace the file whole (rename locally, one PUT on S3): every read parses."""
    f = root.child("w", "status.json")
    big = {"trials": {f"k{i}": {"state": "running", "last_step": i} for i in range(3000)}}
    f.write_json({**big, "n": 0})
    stop = threading.Event()
    seen: list[int] = []
    bad: list[bytes] = []

    def read() -> None:
        while not stop.is_set():
            raw = f.read_bytes()
            try:
                seen.append(json.loads(raw)["n"])
            except ValueError:
                bad.append(raw[:50])

    t = threading.Thread(target=read)
    t.start()
    for n in range(1, 15):
        f.write_json({**big, "n": n})
    stop.set()
    t.join()
    assert not bad
    assert seen and seen == sorted(seen)  # in order, each one a whole file
    assert f.read_json()["n"] == 14
    if root.local:  # no temp file left beside it
        assert sorted(p.name for p in Path(root.child("w").path).iterdir()) == ["status.json"]


def test_local_paths_and_uris(tmp_path: Path) -> None:
    a = open_location(tmp_path / "x")
    b = open_location(f"file://{tmp_path}/x")
    assert a.uri == b.uri == str(tmp_path / "x") and a.local
    assert a.child("id1").uri == str(tmp_path / "x" / "id1")
    assert is_local("./.dab/sweeps") and is_local("file:///srv") and not is_local("s3://b/p")


def test_s3_uri_and_endpoint(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    loc = open_location(f"s3://{s3.bucket}/a/b/", s3.endpoint_url)
    assert (loc.uri, loc.path, loc.local) == (f"s3://{s3.bucket}/a/b", f"{s3.bucket}/a/b", False)
    assert loc.child("id1", "spec.json").uri == f"s3://{s3.bucket}/a/b/id1/spec.json"
    loc.child("id1", "spec.json").write_json({"k": 1})
    assert s3.keys("a/b/") == ["a/b/id1/spec.json"]

    monkeypatch.setenv(ENDPOINT_ENV, s3.endpoint_url)  # how the driver and trials learn it
    assert open_location(f"s3://{s3.bucket}/a/b").child("id1", "spec.json").read_json() == {"k": 1}


@pytest.mark.parametrize(
    ("uri", "endpoint", "message"),
    [
        ("", None, "empty"),
        ("s3:///prefix", None, "no bucket"),
        ("s3://bucket/p", "ftp://minio:9000", r"expected http\(s\)://host:port"),
        ("nosuchscheme://x/y", None, "nosuchscheme://x/y"),
    ],
)
def test_bad_locations_name_the_problem(uri: str, endpoint: str | None, message: str) -> None:
    with pytest.raises(StorageError, match=message):
        open_location(uri, endpoint)

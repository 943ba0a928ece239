"""The settings' storage rules: a cluster needs storage every node reaches."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from service.cli import app
from service.core.config import Settings
from tests.s3 import S3Server, s3_server


def test_embedded_default_keeps_sweeps_under_the_state_dir(tmp_path: Path) -> None:
    s = Settings(state_dir=tmp_path / "state")
    assert s.storage == str((tmp_path / "state" / "sweeps").resolve())
    loc = s.storage_location()
    assert loc.local and loc.child("abc").uri == str((tmp_path / "state" / "sweeps" / "abc").resolve())


def test_a_cluster_refuses_a_local_path_and_says_why(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as e:
        Settings(state_dir=tmp_path, ray_address="http://head:8265")
    text = str(e.value)
    assert "DAB_STORAGE_URI" in text and "other machines" in text
    assert "s3://bucket/prefix" in text and "DAB_STORAGE_SHARED=true" in text
    with pytest.raises(ValidationError, match="DAB_STORAGE_URI is the local path '/srv/nfs/dab'"):
        Settings(state_dir=tmp_path, ray_address="http://head:8265", storage_uri="/srv/nfs/dab")
    # Declared shared (NFS on every node), or object storage: accepted.
    shared = Settings(
        state_dir=tmp_path, ray_address="http://head:8265", storage_uri="/srv/nfs/dab", storage_shared=True
    )
    assert shared.storage == "/srv/nfs/dab"
    s3 = Settings(state_dir=tmp_path, ray_address="http://head:8265", storage_uri="s3://dab/sweeps")
    assert s3.storage == "s3://dab/sweeps"


@pytest.mark.parametrize(
    ("uri", "message"), [("", "empty string"), ("s3://", "no bucket"), ("s3:///x", "no bucket")]
)
def test_bad_storage_uris_name_the_field(tmp_path: Path, uri: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message) as e:
        Settings(state_dir=tmp_path, storage_uri=uri)
    assert e.value.errors()[0]["loc"] == ("storage_uri",)


def test_dab_serve_refuses_to_start_on_a_cluster_with_local_storage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DAB_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("DAB_RAY_ADDRESS", "http://127.0.0.1:1")
    monkeypatch.delenv("DAB_STORAGE_URI", raising=False)
    monkeypatch.delenv("DAB_STORAGE_SHARED", raising=False)
    result = CliRunner().invoke(app, ["serve", "--port", "1"])
    assert result.exit_code == 2
    assert "error: DAB_STORAGE_URI is the local path" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "service.db").exists()  # refused before anything was written


def test_the_storage_location_of_an_s3_setting_reaches_the_server(tmp_path: Path) -> None:
    server: S3Server
    with s3_server() as server:
        s = Settings(
            state_dir=tmp_path,
            storage_uri=f"s3://{server.bucket}/sweeps",
            s3_endpoint_url=server.endpoint_url,
        )
        s.storage_location().child("id1", "spec.json").write_json({"name": "x"})
        assert server.keys() == ["sweeps/id1/spec.json"]

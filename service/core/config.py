"""The service's settings: one pydantic-settings object, read from ``DAB_*`` environment variables.

Everything the embedded stack keeps lives under `state_dir` (default ``./.dab``)::

    <state dir>/service.db        sweeps (SQLite; `database_url` names PostgreSQL instead)
    <state dir>/mlflow.db         MLflow tracking store (SQLite, WAL)
    <state dir>/artifacts/        MLflow artifacts
    <state dir>/sweeps/<id>/      one sweep per directory (spec, status.json, Tune storage), unless
                                  `storage_uri` puts the sweeps elsewhere (s3://bucket/prefix)
    <state dir>/ray/              the embedded Ray head: auth token, head.json, logs
"""

from __future__ import annotations

import os
import sys
from functools import cached_property
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from workers.spec import MAX_SPEC_BYTES, MAX_TRIALS
from workers.storage import Location, is_local, open_location


class Settings(BaseSettings):
    """Service settings. Each field is the environment variable ``DAB_<FIELD>`` (upper case)."""

    model_config = SettingsConfigDict(env_prefix="DAB_", extra="ignore", frozen=True)

    state_dir: Path = Field(default=Path(".dab"), description="everything the embedded stack keeps")
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the sweeps DB (default: sqlite:///<state dir>/service.db)",
    )
    ray_address: str | None = Field(
        default=None,
        description="Ray jobs API of a running cluster (http://head:8265); unset: start an embedded head",
    )
    ray_auth_token: SecretStr | None = Field(
        default=None, description="token of that cluster (else Ray's own RAY_AUTH_TOKEN / token file)"
    )
    mlflow_tracking_uri: str | None = Field(
        default=None, description="MLflow tracking URI (default: sqlite:///<state dir>/mlflow.db)"
    )
    mlflow_ui_url: str | None = Field(default=None, description="base URL of an MLflow UI, for links")
    api_token: SecretStr | None = Field(
        default=None, description="bearer token the API requires (unset: open)"
    )
    storage_uri: str | None = Field(
        default=None,
        description="where sweeps are kept (spec, driver status, Tune state and checkpoints): a local "
        "path or s3://bucket/prefix (default: <state dir>/sweeps)",
    )
    s3_endpoint_url: str | None = Field(
        default=None,
        description="endpoint of an S3-compatible server for s3:// storage, e.g. http://minio:9000 "
        "(default: AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, else AWS itself)",
    )
    storage_shared: bool = Field(
        default=False,
        description="declare that a local storage_uri path is the same shared filesystem (NFS) on "
        "every Ray node; required to use a local path with DAB_RAY_ADDRESS",
    )
    data_dirs: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="directories a spec's data_root may point into (comma-separated; default: "
        "$DAB_DATA_ROOT and <state dir>/data)",
    )
    driver_python: str | None = Field(
        default=None, description="python that runs the driver job (default: this interpreter when embedded)"
    )
    max_body_bytes: int = Field(default=MAX_SPEC_BYTES + 4096, ge=1024, description="largest request body")
    max_trials_per_sweep: int = Field(default=1000, ge=1, le=MAX_TRIALS)
    max_active_sweeps: int = Field(
        default=4, ge=1, description="sweep drivers running at once; more sweeps wait queued"
    )
    max_queued_sweeps: int = Field(
        default=200, ge=1, description="sweeps that may wait queued; a submission beyond is a 429"
    )
    max_job_attempts: int = Field(default=3, ge=1, description="driver submissions per sweep after crashes")
    poll_interval_s: float = Field(default=2.0, gt=0, description="how often running sweeps are reconciled")
    ray_num_cpus: int | None = Field(
        default=None, ge=1, description="CPUs of the embedded head (default: all)"
    )
    ray_nice: int = Field(
        default=10,
        ge=0,
        le=19,
        description="niceness of the embedded head and the trials it runs, so that on a machine they "
        "share the API answers first (0: same priority)",
    )
    ray_head_port: int = Field(
        default=0, ge=0, le=65535, description="GCS port of the embedded head (0: free)"
    )
    ray_dashboard_port: int = Field(
        default=0, ge=0, le=65535, description="jobs API port of the head (0: free)"
    )
    ray_start_timeout_s: float = Field(default=90.0, gt=0)

    @field_validator("storage_uri")
    @classmethod
    def _storage(cls, value: str | None) -> str | None:
        if value is not None:
            if not value.strip():
                raise ValueError("expected a path or s3://bucket/prefix, got an empty string")
            if value.startswith("s3://") and not value[len("s3://") :].split("/", 1)[0]:
                raise ValueError(f"expected s3://bucket/prefix, got {value!r} (no bucket)")
        return value

    @model_validator(mode="after")
    def _cluster_storage(self) -> Settings:
        # On a cluster the driver runs on the head and the trials on any node: a path only this
        # machine has would hold the spec the driver never reads, checkpoints the node that
        # restores a trial never sees, and progress the service never learns.
        if self.ray_address and is_local(self.storage) and not self.storage_shared:
            raise ValueError(
                f"DAB_STORAGE_URI is the local path {self.storage!r} but DAB_RAY_ADDRESS names a "
                "cluster, whose driver and trials run on other machines and would not see the "
                "sweep's spec, progress or checkpoints there. Set DAB_STORAGE_URI=s3://bucket/prefix "
                "(and DAB_S3_ENDPOINT_URL for MinIO), or, if this path is one shared filesystem "
                "(NFS) mounted at the same place on every Ray node, DAB_STORAGE_SHARED=true"
            )
        return self

    @field_validator("data_dirs", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [p for p in (s.strip() for s in value.split(",")) if p]
        return value

    @cached_property
    def state_path(self) -> Path:
        return self.state_dir.expanduser().resolve()

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.state_path / 'service.db'}"

    @property
    def tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{self.state_path / 'mlflow.db'}"

    @property
    def storage(self) -> str:
        """Where sweeps are kept: `storage_uri`, else ``<state dir>/sweeps``."""
        return self.storage_uri or str(self.state_path / "sweeps")

    def storage_location(self) -> Location:
        """The storage root as a `workers.storage.Location` (each sweep is ``<root>/<id>``)."""
        return open_location(self.storage, self.s3_endpoint_url)

    @property
    def embedded(self) -> bool:
        return not self.ray_address

    @property
    def allowed_data_dirs(self) -> list[Path]:
        dirs = list(self.data_dirs)
        if not dirs:
            if os.environ.get("DAB_DATA_ROOT"):
                dirs.append(Path(os.environ["DAB_DATA_ROOT"]))
            dirs.append(self.state_path / "data")
        return [d.expanduser().resolve() for d in dirs]

    def mlflow_ui_command(self) -> str:
        """The command that opens the MLflow UI on this service's tracking store."""
        uri = self.tracking_uri
        if uri.startswith(("http://", "https://")):
            return f"open {uri}"
        artifacts = self.state_path / "artifacts"
        exe = Path(sys.executable).with_name("mlflow")
        mlflow = str(exe) if exe.exists() else "mlflow"
        return (
            f"{mlflow} ui --backend-store-uri {uri} --default-artifact-root {artifacts.as_uri()} --port 5000"
        )


__all__ = ["Settings"]

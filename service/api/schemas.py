"""Response models: a family per resource (SweepPublic, SweepsPublic(data, count), ...)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

SweepState = Literal["queued", "running", "waiting", "cancelling", "finished", "failed", "cancelled"]
TrialState = Literal[
    "pending", "running", "retrying", "finished", "failed", "killed", "skipped", "adopted", "waiting"
]


class Links(BaseModel):
    self: str
    trials: str
    results: str
    report: str
    cancel: str
    mlflow_experiment: str | None = Field(None, description="the sweep's MLflow experiment in the UI")
    mlflow_ui_command: str = Field(description="opens the MLflow UI on the service's tracking store")


class SweepPublic(BaseModel):
    id: str
    name: str
    experiment: str
    state: SweepState
    trial_count: int
    cell_count: int
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    message: str | None = None
    counts: dict[str, int] | None = Field(None, description="trials by state (from the driver's status)")
    priority: int = Field(
        0, description="queued sweeps start highest priority first, then in submission order"
    )
    suite_id: str | None = Field(None, description="the suite this sweep is a member of")


class SweepsPublic(BaseModel):
    data: list[SweepPublic]
    count: int = Field(description="sweeps matching the filter, over all pages")


class SweepDetail(SweepPublic):
    progress: float = Field(description="0..1: finished trials plus the steps done by running ones")
    eta_s: float | None = Field(None, description="seconds left, from the rate so far (as of snapshot_at)")
    elapsed_s: float | None = Field(None, description="seconds from start to the end, or to snapshot_at")
    snapshot_at: datetime | None = Field(
        None, description="when the reconciler last wrote this sweep's state"
    )
    last_error: str | None = Field(None, description="a failed (else retrying) trial's error")
    ray_job_id: str | None = None
    job_attempts: int = 0
    mlflow_experiment_id: str | None = None
    parent_run_id: str | None = None
    tracking_uri: str
    spec: dict[str, Any]
    links: Links


class TrialPublic(BaseModel):
    trial_key: str
    index: int
    cell_key: str
    seed: int
    state: TrialState
    attempts: int = 0
    last_step: float | None = None
    steps: int | None = None
    run_id: str | None = None
    run_status: str | None = Field(None, description="the MLflow run's status")
    metrics: dict[str, float] = Field(default_factory=dict, description="latest value of each metric")
    error: str | None = None
    nodes: list[str] = Field(
        default_factory=list,
        description="the Ray nodes (IPs) it ran on, in order: more than one after a node loss",
    )
    device: str | None = Field(None, description="what it trains on: cpu or cuda")
    note: str | None = Field(None, description="e.g. a GPU was asked for but the node has no CUDA")
    adopted_from: str | None = Field(
        None, description="adopted: the sweep whose run this is; waiting: the sweep running it"
    )
    stopped_at: float | None = Field(
        None, description="a search's scheduler stopped its configuration at this step (run FINISHED)"
    )


class TrialsPublic(BaseModel):
    data: list[TrialPublic]
    count: int


class MetricStats(BaseModel):
    """One cell's numbers for one metric: each run's value read by the metric's ``agg``
    (`ResultsPublic.metric_info`), in its stored unit (fractions as fractions, not %)."""

    n: int
    mean: float | None
    std: float | None
    min: float | None
    max: float | None
    values: list[float]
    seeds: list[int]
    paper: dict[str, Any] | None = None
    p_value: float | None = Field(None, description="Welch's t-test against the reference cell")


class MetricInfo(BaseModel):
    """What a metric's numbers are, as its experiment family declares it (`dab_core.metrics`)."""

    mode: Literal["max", "min"] = Field(
        description="max: higher is better; the spec's mode wins for its metric"
    )
    unit: Literal["fraction", "raw"] = Field(description="fraction: a value in [0, 1], shown as %")
    display: str = Field(description="the name tables and figures print")
    agg: Literal["final", "best"] = Field(description="how each run's value was read: its final or best one")


class CellResult(BaseModel):
    cell_key: str
    cell: dict[str, Any]
    expected: int = Field(description="trials of the cell (its seeds)")
    adopted: dict[str, str] = Field(
        default_factory=dict, description="seed -> the sweep whose FINISHED run this cell adopted"
    )
    metrics: dict[str, MetricStats]


class ResultsPublic(BaseModel):
    sweep_id: str
    state: SweepState
    metrics: list[str]
    agg: Literal["final", "best"] | None = Field(
        description="the requested agg; null: each metric's declared"
    )
    metric_info: dict[str, MetricInfo] = Field(description="per metric: its direction, unit, name and agg")
    reference_cell: str | None
    significance: str
    cells: list[CellResult]


class FigureLink(BaseModel):
    name: str
    url: str


class ReportPublic(BaseModel):
    sweep_id: str
    markdown: str
    figures: list[FigureLink]
    artifact_path: str | None = Field(None, description="where the report is logged on the parent run")


SuiteState = Literal["queued", "running", "cancelling", "finished", "failed", "cancelled"]


class SuiteMemberPublic(BaseModel):
    file: str = Field(description="the member's spec file, as the suite lists it")
    sweep_id: str
    name: str
    state: SweepState
    trial_count: int
    progress: float
    counts: dict[str, int] | None = None
    message: str | None = None


class SuiteLinks(BaseModel):
    self: str
    report: str
    cancel: str
    sweeps: list[str]
    mlflow_runs_filter: str = Field(description="an MLflow search filter that finds the suite's runs")


class SuitePublic(BaseModel):
    id: str
    name: str
    description: str
    state: SuiteState = Field(
        description="from its members: running while any is active and one has started, "
        "finished when all finished, else failed or cancelled once all have ended"
    )
    priority: int
    trial_count: int = Field(description="over the members; a trial two members share counts in each")
    distinct_trials: int = Field(description="what runs at most: each shared trial once")
    progress: float = Field(description="0..1, over the members' trials")
    counts: dict[str, int] = Field(description="trials by state, summed over the members")
    created_at: datetime
    finished_at: datetime | None = None
    mlflow_run_id: str | None = Field(None, description="the suite-level run its report is logged to")
    members: list[SuiteMemberPublic]
    links: SuiteLinks


class SuitesPublic(BaseModel):
    data: list[SuitePublic]
    count: int


class SuiteReportPublic(BaseModel):
    suite_id: str
    state: SuiteState
    markdown: str
    figures: list[FigureLink]
    data: dict[str, Any] = Field(description="every table and figure's cells: n, expected, mean, std, paper")
    artifact_path: str | None = None


class Health(BaseModel):
    status: Literal["ok", "starting", "degraded"]
    ray: str | None = None
    detail: str | None = None

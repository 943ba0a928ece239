"""The driver's command line: ``python -m workers.driver SPEC --sweep-dir LOCATION ...``.

SPEC and LOCATION are local paths or storage URIs (``s3://bucket/prefix/<id>/spec.json`` and
``s3://bucket/prefix/<id>``, see `workers.storage`); an S3-compatible endpoint comes from
``DAB_S3_ENDPOINT_URL`` (or the standard ``AWS_ENDPOINT_URL_S3``), credentials from the
standard AWS variables.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from workers.driver.sweep import EXIT_USAGE, SweepDirError, run_sweep
from workers.driver.tuner import DEFAULT_CHECKPOINTS_TO_KEEP

DESCRIPTION = "The sweep driver: runs a spec's trials on Ray Tune with each trial tracked in MLflow."


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m workers.driver", description=DESCRIPTION)
    p.add_argument("spec", help="sweep spec file (YAML or JSON): a path or a storage URI (s3://...)")
    p.add_argument(
        "--sweep-dir",
        required=True,
        help="the sweep's location (status, Tune state and checkpoints): a directory or s3://bucket/prefix/id",
    )
    p.add_argument(
        "--tracking-uri",
        default=os.environ.get("DAB_MLFLOW_TRACKING_URI") or os.environ.get("MLFLOW_TRACKING_URI"),
        help="MLflow tracking URI: sqlite:///path or http(s)://server (env DAB_MLFLOW_TRACKING_URI)",
    )
    p.add_argument(
        "--ray-address",
        default=os.environ.get("DAB_RAY_ADDRESS") or None,
        help="Ray cluster address (env DAB_RAY_ADDRESS); default: RAY_ADDRESS or a local Ray",
    )
    p.add_argument(
        "--sweep-id",
        default=None,
        help="sweep id, which finds its MLflow experiment 'dab/<spec name> (<id>)' (default: the sweep dir's name)",
    )
    p.add_argument(
        "--artifact-root",
        default=os.environ.get("DAB_MLFLOW_ARTIFACT_ROOT") or None,
        help="root URI of the sweep's MLflow artifacts (env DAB_MLFLOW_ARTIFACT_ROOT); default: beside a "
        "sqlite store, or the tracking server's",
    )
    p.add_argument(
        "--tag",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an MLflow tag for the parent and every trial run (repeatable); the service tags a "
        "suite's runs with dab.suite_id",
    )
    p.add_argument("--num-cpus", type=float, default=None, help="CPUs of a local Ray this driver starts")
    p.add_argument("--checkpoints-to-keep", type=int, default=DEFAULT_CHECKPOINTS_TO_KEEP)
    p.add_argument(
        "--keep-tune-checkpoints",
        action="store_true",
        help="keep finished trials' checkpoints in Tune's storage (default: the MLflow artifact is the copy)",
    )
    p.add_argument("-v", "--verbose", type=int, default=1, help="Tune verbosity 0-3 (default 1)")
    return p


def _load(spec: str) -> Any:
    """The spec (or suite) at a path, or a spec at a storage URI (the service writes JSON there)."""
    from workers.spec import MAX_SPEC_BYTES, SpecError, load_spec, parse_spec
    from workers.storage import is_local, open_location

    if is_local(spec):
        return load_spec(spec[len("file://") :] if spec.startswith("file://") else spec)
    try:
        raw = open_location(spec).read_bytes(limit=MAX_SPEC_BYTES)
    except (FileNotFoundError, IsADirectoryError):
        raise SpecError("no such spec file", source=spec) from None
    except OSError as e:
        raise SpecError(f"cannot read the spec: {e}", source=spec) from None
    content_type = "application/json" if spec.endswith(".json") else None
    return parse_spec(raw, source=spec, content_type=content_type)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.tracking_uri:
        print("error: --tracking-uri (or DAB_MLFLOW_TRACKING_URI) is required", file=sys.stderr)
        return EXIT_USAGE
    from workers.spec import SpecError, SweepSuite, expand
    from workers.storage import StorageError

    try:
        spec = _load(args.spec)
        if isinstance(spec, SweepSuite):
            names = ", ".join(s.name for _, s in spec.specs)
            print(
                f"error: {args.spec} is a suite ({names}); the driver runs one sweep: submit each spec on its own",
                file=sys.stderr,
            )
            return EXIT_USAGE
        trials = expand(spec)
    except (SpecError, StorageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    tags = {}
    for item in args.tag:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            print(f"error: --tag {item!r}: expected KEY=VALUE", file=sys.stderr)
            return EXIT_USAGE
        tags[key.strip()] = value
    if args.sweep_id is None:
        # Standalone use: the id is derived, so running this again on DIR continues the sweep.
        name = args.sweep_dir.rstrip("/").rsplit("/", 1)[-1]
        print(f"sweep id: {name} (the sweep location's last name)", flush=True)
    try:
        outcome = run_sweep(
            spec,
            trials,
            sweep_dir=args.sweep_dir,
            tracking_uri=args.tracking_uri,
            sweep_id=args.sweep_id,
            ray_address=args.ray_address,
            artifact_root=args.artifact_root,
            num_cpus=args.num_cpus,
            checkpoints_to_keep=args.checkpoints_to_keep,
            verbose=args.verbose,
            prune_checkpoints=not args.keep_tune_checkpoints,
            extra_tags=tags,
        )
    except SweepDirError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    shared = (
        f"adopted {len(outcome.adopted)}, waiting {len(outcome.waiting)}, "
        if outcome.adopted or outcome.waiting
        else ""
    )
    print(
        f"sweep {outcome.sweep_id}: {outcome.state}; ran {len(outcome.ran)}, skipped {len(outcome.skipped)}, "
        f"{shared}finished {len(outcome.finished)}, failed {len(outcome.failed)}, killed {len(outcome.killed)} "
        f"({outcome.seconds:.1f} s)",
        flush=True,
    )
    return outcome.exit_code

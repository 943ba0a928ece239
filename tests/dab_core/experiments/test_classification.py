"""The classification family (paper 5.3): shapes at each placement, validation, the EMD metric,
exact resume, and that a tiny ResNet learns an easy generated dataset."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError

from dab_core import parse_config, run_trial
from dab_core.approximators import DenseApproximator, ElementwiseApproximator
from dab_core.experiments._images import ConvApproximator, emd_1d, fake_images, random_crop_flip
from dab_core.experiments.classification import (
    ClassificationConfig,
    ClassificationTask,
    aligned_displacement,
)
from dab_core.hard import hard_functions

TINY: dict[str, Any] = dict(
    experiment="classification",
    dataset="fake",
    image_size=16,
    width=4,
    batch_size=16,
    train_size=64,
    test_size=32,
    steps=4,
    eval_every=2,
    device="cpu",
    num_threads=1,
)


def tiny(**overrides: Any) -> dict[str, Any]:
    return {**TINY, **overrides}


def task_of(**overrides: Any) -> ClassificationTask:
    cfg = parse_config(tiny(**overrides))
    assert isinstance(cfg, ClassificationConfig)
    return ClassificationTask(cfg, torch.device("cpu"))


def bridge_io(task: ClassificationTask, n: int = 5) -> tuple[torch.Size, torch.Size, torch.Tensor]:
    """Shapes of the bridge's input and output, and the logits, in one training-mode forward."""
    seen: dict[str, torch.Tensor] = {}
    handle = task.model.bridge.register_forward_hook(
        lambda m, a, o: seen.update(inp=a[0], out=o)  # type: ignore[arg-type, return-value]
    )
    try:
        logits = task.model(task.inputs(task.train.images[:n], step=0))
    finally:
        handle.remove()
    return seen["inp"].shape, seen["out"].shape, logits


# -- shapes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("placement", "shape"), [(1, (4, 16, 16)), (2, (8, 8, 8)), (3, (16, 4, 4)), (4, (32, 2, 2))]
)
def test_bridge_sees_the_feature_map_of_its_stage(placement: int, shape: tuple[int, ...]) -> None:
    task = task_of(hard="signum", placement=placement)
    assert task.config.bridge_shape == shape
    inp, out, logits = bridge_io(task)
    assert tuple(inp) == (5, *shape)
    assert tuple(out) == (5, *shape)  # signum keeps the map; the next stages run on it
    assert tuple(logits.shape) == (5, 10)
    assert task.model.bridge.dab_loss is not None and task.model.bridge.dab_loss.dim() == 0


def test_cifar_sized_model_has_the_paper_shapes() -> None:
    cfg = ClassificationConfig(steps=1, dataset="fake", hard="sort_rowcol")
    assert cfg.bridge_shape == (512, 4, 4)  # ResNet18 on 32x32: stage 4 gives 512 x 4 x 4
    assert cfg.bridge_out_shape == (2 * 512 * 4 * 4,)
    assert ClassificationConfig(steps=1, placement=1).bridge_shape == (64, 32, 32)


@pytest.mark.parametrize(
    ("hard", "params", "out"), [("sort_rowcol", {}, (2 * 32 * 2 * 2,)), ("topk", {"k": 10}, (10,))]
)
def test_shape_changing_functions_feed_a_linear_head(
    hard: str, params: dict[str, Any], out: tuple[int]
) -> None:
    task = task_of(hard=hard, hard_params=params, placement=4)
    inp, got, logits = bridge_io(task)
    assert tuple(inp) == (5, 32, 2, 2)
    assert tuple(got) == (5, *out)
    assert task.model.flat_head and task.model.head.in_features == out[0]
    assert tuple(logits.shape) == (5, 10)
    # the forward is the hard function itself, bit for bit
    task.model.eval()
    with torch.no_grad():
        x = task.inputs(task.train.images[:5])
        z = task.model.stages[3](
            task.model.stages[2](task.model.stages[1](task.model.stages[0](task.model.stem(x))))
        )
        expected = hard_functions.get(hard, **params)(z)
        assert torch.equal(task.model.bridge(z), expected)


def test_approximator_choice() -> None:
    assert isinstance(task_of(hard="signum").model.bridge.approximator, ElementwiseApproximator)
    assert isinstance(task_of(hard="sort_rowcol").model.bridge.approximator, DenseApproximator)
    assert isinstance(task_of(hard="kmeans", approximator="conv").model.bridge.approximator, ConvApproximator)
    assert task_of(hard="signum", estimator="identity").model.bridge.approximator is None


# -- validation -------------------------------------------------------------------------------------


def error_of(**overrides: Any) -> str:
    with pytest.raises(ValidationError) as info:
        parse_config(tiny(**overrides))
    return str(info.value)


def test_ste_is_refused_for_shape_changing_functions() -> None:
    msg = error_of(hard="sort_rowcol", estimator="ste")
    assert "estimator 'ste' needs a shape-preserving hard function" in msg
    assert "(32, 2, 2)" in msg and "(256,)" in msg
    assert "estimator" in error_of(hard="topk", hard_params={"k": 3}, estimator="ste")
    # the flat sort keeps the shape: STE is allowed (paper, Figure 6 right)
    assert parse_config(tiny(hard="sort", estimator="ste")).estimator == "ste"


def test_shape_changing_functions_need_placement_4() -> None:
    msg = error_of(hard="sort_rowcol", placement=2)
    assert msg.count("placement:") == 1 and "placement 4 only" in msg
    # a plain baseline replaces the hard function, so any placement works
    assert parse_config(tiny(hard="sort_rowcol", estimator="identity", placement=2)).placement == 2


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ValidationError) as info:
        parse_config(tiny(hard="nope"))
    (err,) = info.value.errors()
    assert err["loc"] == ("hard",) and "unknown hard function 'nope'" in err["msg"] and "signum" in err["msg"]
    assert "hard_params" in error_of(hard="topk")  # k is required
    assert "hard_params" in error_of(hard="topk", hard_params={"k": 10_000})
    assert "hard_params" in error_of(hard="signum", hard_params={"nope": 1})
    assert "hard_params" in error_of(hard="topk", estimator="identity")  # the bridge still binds them
    assert "image_size" in error_of(dataset="cifar10", image_size=16)
    assert "approximator" in error_of(hard="sort_rowcol", approximator="conv")
    assert "train_size (64) must be at least batch_size (128)" in error_of(batch_size=128)
    with pytest.raises(ValidationError) as info:
        parse_config(tiny(placement=5))
    assert info.value.errors()[0]["loc"] == ("placement",)
    with pytest.raises(ValidationError) as info:
        parse_config(tiny(nope=1))
    assert info.value.errors()[0]["loc"] == ("nope",)


# -- metrics ----------------------------------------------------------------------------------------


def test_emd_of_identical_inputs_is_zero() -> None:
    x = torch.randn(3, 50)
    assert torch.equal(emd_1d(x, x), torch.zeros(3))
    assert torch.allclose(emd_1d(x, x[:, torch.randperm(50)]), torch.zeros(3))


def test_emd_of_a_known_pair() -> None:
    # Q_a = 0 on (0, 1/2], 1 on (1/2, 1]; Q_b = 0 on (0, 2/3], 3 on (2/3, 1]:
    # |1 - 0| * (2/3 - 1/2) + |1 - 3| * (1 - 2/3) = 1/6 + 2/3 = 5/6
    a = torch.tensor([[1.0, 0.0]])
    b = torch.tensor([[3.0, 0.0, 0.0]])
    assert emd_1d(a, b).item() == pytest.approx(5 / 6)
    # equal sizes: mean |sorted a - sorted b| = (|0 - 1| + |2 - 5|) / 2
    assert emd_1d(torch.tensor([[2.0, 0.0]]), torch.tensor([[1.0, 5.0]])).item() == pytest.approx(2.0)


def test_emd_matches_scipy() -> None:
    scipy_stats = pytest.importorskip("scipy.stats")
    gen = torch.Generator().manual_seed(0)
    a, b = (
        torch.randn(4, 13, generator=gen, dtype=torch.float64),
        2 * torch.rand(4, 29, generator=gen, dtype=torch.float64),
    )
    ours = emd_1d(a, b)
    for i in range(4):
        assert ours[i].item() == pytest.approx(scipy_stats.wasserstein_distance(a[i], b[i]), rel=1e-9)


def test_sort_functions_keep_the_value_distribution_and_displacement_sees_the_sort() -> None:
    x = torch.tensor([[[[3.0, 1.0], [2.0, 4.0]]]])  # (1, 1, 2, 2)
    rowcol = hard_functions.get("sort_rowcol")(x)  # rows [1,3],[2,4] ⊕ cols [2,1],[3,4]
    assert rowcol.tolist() == [[1.0, 3.0, 2.0, 4.0, 2.0, 1.0, 3.0, 4.0]]
    assert emd_1d(x.flatten(1), rowcol).item() == pytest.approx(0.0)  # a permutation of x ⊕ x
    # displacement pairs each half with x = [3, 1, 2, 4]: |1-3|+|3-1|+0+0 + |2-3|+0+|3-2|+0 = 6, / 8
    assert aligned_displacement(x, rowcol).item() == pytest.approx(6 / 8)
    assert aligned_displacement(x, x).item() == 0.0
    # signum moves values: x = [0.2, 2] -> [0, 1], W1 = (0.2 + 1) / 2
    s = torch.tensor([[0.2, 2.0]])
    assert emd_1d(s, hard_functions.get("signum")(s)).item() == pytest.approx(0.6)


def test_evaluate_reports_accuracy_and_distances() -> None:
    metrics = task_of(hard="sort_rowcol").evaluate()
    assert set(metrics) == {"test_accuracy", "test_loss", "test_emd", "test_displacement"}
    assert 0 <= metrics["test_accuracy"] <= 1
    assert metrics["test_emd"] == pytest.approx(0.0, abs=1e-6)  # sort_rowcol permutes values
    assert metrics["test_displacement"] > 0
    assert task_of(hard="kmeans", hard_params={"k": 3}).evaluate()["test_emd"] > 0


# -- data order and resume --------------------------------------------------------------------------


def test_batches_and_augmentation_are_functions_of_seed_and_step() -> None:
    a, b = task_of(seed=1), task_of(seed=1)
    xa, ya = a.batches(7)
    b.batches(0)  # a different history must not matter
    xb, yb = b.batches(7)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert torch.equal(a.inputs(xa, step=7), b.inputs(xb, step=7))
    assert not torch.equal(a.inputs(xa, step=7), a.inputs(xa, step=8))
    assert not torch.equal(task_of(seed=2).batches(7)[0], xa)


def test_random_crop_flip_gives_a_flipped_or_plain_crop_of_the_padded_image() -> None:
    x = fake_images(4, 3, 8, split=0).images.float()
    out = random_crop_flip(x, torch.Generator().manual_seed(0), pad=2)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(4):
        crops = [padded[i, :, dy : dy + 8, dx : dx + 8] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], c) or torch.equal(out[i], c.flip(-1)) for c in crops)
    assert torch.equal(random_crop_flip(x, torch.Generator().manual_seed(0), pad=2), out)
    # NCHW-contiguous: the channels-last view it used to return crashed the CPU conv backward
    # (oneDNN, torch 2.14.1, seen on an AMD EPYC machine) in the resume test below
    assert out.is_contiguous()


def run_keeping_checkpoints(
    cfg: dict[str, Any], into: Path, resume_from: Path | None = None
) -> dict[int, tuple[dict[str, float], Path]]:
    kept: dict[int, tuple[dict[str, float], Path]] = {}

    def report(metrics: dict[str, float], checkpoint: str | None) -> None:
        if checkpoint is not None:  # the directory is removed once report returns: copy it
            step = int(metrics["step"])
            dst = into / f"step-{step}"
            shutil.copytree(checkpoint, dst)
            kept[step] = (dict(metrics), dst)

    run_trial(cfg, report=report, checkpoint_dir=str(resume_from) if resume_from else None)
    return kept


def assert_same_checkpoint(a: Path, b: Path) -> None:
    sa = torch.load(a / "trial.pt", weights_only=False)
    sb = torch.load(b / "trial.pt", weights_only=False)
    assert sa["step"] == sb["step"]
    ma, mb = sa["state"]["model"], sb["state"]["model"]
    assert ma.keys() == mb.keys()
    for key in ma:
        assert torch.allclose(ma[key].float(), mb[key].float(), atol=1e-6, rtol=1e-5), key


def test_resume_replays_the_uninterrupted_run(tmp_path: Path) -> None:
    cfg = tiny(hard="signum", steps=6, eval_every=3, augment=True, seed=3)
    straight = run_keeping_checkpoints(cfg, tmp_path / "straight")
    assert sorted(straight) == [3, 6]
    resumed = run_keeping_checkpoints(cfg, tmp_path / "resumed", resume_from=straight[3][1])
    assert sorted(resumed) == [6]
    assert_same_checkpoint(straight[6][1], resumed[6][1])
    m_straight, m_resumed = straight[6][0], resumed[6][0]
    for key in ("train_loss", "train_ce", "dab_loss", "test_accuracy", "test_loss", "test_emd"):
        assert m_resumed[key] == pytest.approx(m_straight[key], rel=1e-5, abs=1e-6), key


# -- learning ---------------------------------------------------------------------------------------


def test_a_tiny_resnet_with_a_dab_bridge_learns() -> None:
    reports: list[dict[str, float]] = []
    cfg = tiny(
        hard="signum", width=8, batch_size=32, lr=3e-3, train_size=256, test_size=128,
        steps=40, eval_every=20, augment=False,
    )  # fmt: skip
    final = run_trial(cfg, report=lambda m, c: reports.append(m))
    assert reports[1]["train_ce"] < reports[0]["train_ce"]
    assert reports[1]["dab_loss"] < reports[0]["dab_loss"]  # the approximator learns signum
    assert final["test_accuracy"] > 0.5  # chance is 0.1: the classes differ in colour and pattern


@pytest.mark.parametrize(
    ("hard", "estimator"), [("sort", "ste"), ("sort_rowcol", "dab"), ("signum", "identity")]
)
def test_each_estimator_trains(hard: str, estimator: str) -> None:
    final = run_trial(tiny(hard=hard, estimator=estimator))
    assert torch.isfinite(torch.tensor(final["train_loss"]))
    assert ("dab_loss" in final) == (estimator == "dab")


def test_final_checkpoint_carries_per_class_accuracy(tmp_path: Path) -> None:
    import json

    found: dict[int, dict[str, Any]] = {}

    def report(metrics: dict[str, float], ckpt: str | None) -> None:
        art = Path(ckpt) / "artifacts" if ckpt else None
        if art is not None and art.is_dir():
            found[int(metrics["step"])] = {
                "per_class": json.loads((art / "per_class_accuracy.json").read_text()),
                "png": (art / "per_class_accuracy.png").read_bytes()[:8],
                "accuracy": metrics["test_accuracy"],
            }

    run_trial(tiny(), report=report)
    assert list(found) == [4]  # the final checkpoint only
    per_class = found[4]["per_class"]
    assert len(per_class) == 10 and all(0 <= a <= 1 for a in per_class)
    assert found[4]["png"] == b"\x89PNG\r\n\x1a\n"
    # Every class is present in the test set, so the overall accuracy lies between the extremes.
    assert min(per_class) <= found[4]["accuracy"] <= max(per_class)

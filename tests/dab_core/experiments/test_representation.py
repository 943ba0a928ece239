"""The representation family (paper 5.2): the BPP mapping, dataset defaults, validation, the
codes of each variant, MS-SSIM, the linear probe, exact resume, and that tiny models learn."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError

from dab_core import parse_config, run_trial
from dab_core.experiments._images import (
    StreamImages,
    TensorImages,
    TrainBatches,
    fake_images,
    linear_probe,
    ms_ssim,
    ms_ssim_levels,
)
from dab_core.experiments.representation import (
    CoordConvEncoder,
    DenseDecoder,
    RepresentationConfig,
    RepresentationTask,
    ResNet18Encoder,
    ThresholdTask,
    UNetDecoder,
    UNetEncoder,
    make_task,
)

TINY: dict[str, Any] = dict(
    experiment="representation",
    variant="dab-signum",
    dataset="fake",
    image_size=16,
    channels=1,
    width=4,
    dense_hidden=32,
    bpp=0.1,
    batch_size=16,
    train_size=64,
    test_size=32,
    probe_epochs=5,
    steps=4,
    eval_every=2,
    device="cpu",
    num_threads=1,
)


def tiny(**overrides: Any) -> dict[str, Any]:
    return {**TINY, **overrides}


def config(**fields: Any) -> RepresentationConfig:
    cfg = parse_config({"experiment": "representation", "steps": 1, **fields})
    assert isinstance(cfg, RepresentationConfig)
    return cfg


def task_of(**overrides: Any) -> Any:
    cfg = parse_config(tiny(**overrides))
    assert isinstance(cfg, RepresentationConfig)
    torch.manual_seed(cfg.seed)
    return make_task(cfg, torch.device("cpu"))


# -- the BPP mapping --------------------------------------------------------------------------------


def test_imagenet_bit_budget_matches_the_paper() -> None:
    # Figure 5: 512 x 512 images compressed to 786 bits, 496 trits for dab-signum.
    binary = config(variant="dab-binary", dataset="imagenet", bpp=0.001)
    assert binary.input_shape == (3, 512, 512)
    assert binary.latent_units == 786
    assert config(variant="dab-bernoulli", dataset="imagenet", bpp=0.001).latent_units == 786
    assert config(variant="dab-signum", dataset="imagenet", bpp=0.001).latent_units == 496
    # the paper's axis label, taken literally, gives a smaller budget (docs/image_families.md)
    assert config(variant="dab-binary", dataset="imagenet", bpp=0.00097).latent_units == 762
    assert config(variant="dab-signum", dataset="imagenet", bpp=0.00097).latent_units == 481


@pytest.mark.parametrize(
    ("dataset", "variant", "units", "code_dim"),
    [
        ("fashion_mnist", "dab-binary", 78, 78),  # 0.1 * 1 * 28 * 28 = 78.4 bits
        ("fashion_mnist", "bernoulli-vae", 78, 78),
        ("fashion_mnist", "dab-signum", 49, 49),  # 78.4 / log2(3) = 49.5 trits
        ("fashion_mnist", "gumbel-vae", 23, 230),  # 78.4 / log2(10) = 23.6 ten-way categoricals
        ("fashion_mnist", "threshold", 64, 64),  # an 8 x 8 image (64 <= 78.4)
        ("cifar10", "dab-bernoulli", 307, 307),  # 0.1 * 3 * 32 * 32 = 307.2 bits
        ("cifar10", "dab-signum", 193, 193),
        ("cifar10", "gumbel-vae", 92, 920),
        ("cifar10", "threshold", 300, 300),  # 3 x 10 x 10
    ],
)
def test_latent_units_at_bpp_0_1(dataset: str, variant: str, units: int, code_dim: int) -> None:
    cfg = config(variant=variant, dataset=dataset, bpp=0.1)
    assert (cfg.latent_units, cfg.code_dim) == (units, code_dim)


def test_exact_budgets_are_not_lost_to_float_error() -> None:
    assert config(variant="dab-binary", dataset="cifar10", bpp=0.3).latent_units == 921  # 921.6
    assert config(variant="dab-binary", dataset="fashion_mnist", bpp=0.5).latent_units == 392


# -- defaults and validation ------------------------------------------------------------------------


def test_dataset_defaults_follow_appendix_7_2() -> None:
    fm = config(variant="dab-signum", dataset="fashion_mnist", bpp=0.1)
    assert (fm.architecture, fm.optimizer, fm.lr, fm.batch_size, fm.activation, fm.gamma) == (
        "unet", "adam", 1e-3, 128, "elu", 10.0,
    )  # fmt: skip
    cifar = config(variant="dab-signum", dataset="cifar10", bpp=0.1)
    assert (cifar.architecture, cifar.optimizer, cifar.lr, cifar.batch_size, cifar.activation, cifar.gamma) == (
        "coordconv-dense", "rmsprop", 1e-4, 128, "relu", 70.0,
    )  # fmt: skip
    imagenet = config(variant="dab-signum", dataset="imagenet", bpp=0.001)
    assert (imagenet.architecture, imagenet.optimizer, imagenet.batch_size, imagenet.activation, imagenet.gamma) == (
        "resnet18-dense", "rmsprop", 192, "elu", 2.0,
    )  # fmt: skip
    # explicit values win, and a dumped config parses back to itself
    own = config(variant="dab-signum", dataset="cifar10", bpp=0.1, gamma=5.0, optimizer="adam")
    assert (own.gamma, own.optimizer, own.lr) == (5.0, "adam", 1e-4)
    assert parse_config(own.model_dump()) == own


def error_of(**overrides: Any) -> str:
    with pytest.raises(ValidationError) as info:
        parse_config(tiny(**overrides))
    return str(info.value)


def test_config_errors_name_the_field() -> None:
    assert "bpp:" in error_of(bpp=0.001)  # 0.256 bits for a 1 x 16 x 16 image
    assert "hard_params" in error_of(variant="bernoulli-vae", hard_params={"eps": 0.1})
    assert "hard_params" in error_of(variant="dab-signum", hard_params={"eps": -1.0})
    assert "hard_params" in error_of(variant="dab-binary", hard_params={"eps": 0.1})
    assert "train_size (64) must be at least batch_size (128)" in error_of(batch_size=128)
    with pytest.raises(ValidationError) as info:
        parse_config(
            {
                "experiment": "representation",
                "steps": 1,
                "variant": "dab-binary",
                "dataset": "cifar10",
                "bpp": 0.1,
                "channels": 1,
            }
        )
    assert "channels applies to dataset 'fake' only" in str(info.value)
    with pytest.raises(ValidationError) as info:
        parse_config(
            {
                "experiment": "representation",
                "steps": 1,
                "variant": "dab-binary",
                "dataset": "fashion_mnist",
                "bpp": 0.1,
                "image_size": 32,
            }
        )
    assert "image_size:" in str(info.value)
    for field, value in [("variant", "vq-vae"), ("thresholds", [0.0, 0.5]), ("bpp", 0), ("relaxation", "x")]:
        with pytest.raises(ValidationError) as info:
            parse_config(tiny(**{field: value}))
        assert info.value.errors()[0]["loc"][0] == field


# -- networks and codes -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoder_cls", "decoder_cls", "shape"),
    [
        (UNetEncoder, UNetDecoder, (1, 28, 28)),
        (CoordConvEncoder, DenseDecoder, (3, 32, 32)),
        (ResNet18Encoder, DenseDecoder, (3, 40, 40)),
    ],
)
def test_encoders_and_decoders_keep_the_image_shape(
    encoder_cls: Any, decoder_cls: Any, shape: tuple[int, int, int]
) -> None:
    enc = encoder_cls(shape, 4, "elu", 11)
    dec = decoder_cls(shape, 4 if decoder_cls is UNetDecoder else 32, "elu", 11)
    h = enc(torch.rand(2, *shape))
    assert tuple(h.shape) == (2, 11)
    assert tuple(dec(h).shape) == (2, *shape)


@pytest.mark.parametrize(
    ("variant", "values"),
    [
        ("dab-signum", {-1.0, 0.0, 1.0}),
        ("dab-binary", {0.0, 1.0}),
        ("dab-bernoulli", {0.0, 1.0}),
        ("bernoulli-vae", {0.0, 1.0}),
    ],
)
def test_codes_are_discrete(variant: str, values: set[float]) -> None:
    task = task_of(variant=variant, hard_params={"eps": 0.1} if variant == "dab-signum" else {})
    assert task.model is not None
    task.model.eval()
    with torch.no_grad():
        code = task.encode_codes(task.test.images.float() / 255)
    assert tuple(code.shape) == (32, task.config.latent_units)
    assert set(code.unique().tolist()) <= values


def test_gumbel_codes_are_one_hot_per_variable() -> None:
    task = task_of(variant="gumbel-vae", gumbel_categories=4)
    units = task.config.latent_units  # 25.6 bits / log2(4) = 12 four-way variables
    assert units == 12
    with torch.no_grad():
        code = task.encode_codes(task.test.images.float() / 255).view(32, units, 4)
    assert torch.equal(code.sum(dim=-1), torch.ones(32, units))


def test_vae_temperature_anneals_to_its_floor() -> None:
    task = task_of(variant="gumbel-vae", temperature_anneal=1e-3, temperature_min=0.5)
    assert task.temperature(0) == 1.0
    assert task.temperature(100) == pytest.approx(torch.exp(torch.tensor(-0.1)).item())
    assert task.temperature(10_000) == 0.5


# -- metrics ----------------------------------------------------------------------------------------


def test_ms_ssim_equals_pytorch_msssim_on_large_images() -> None:
    pytorch_msssim = pytest.importorskip("pytorch_msssim")
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 176, 176, generator=gen, dtype=torch.float64)
    y = (x + 0.1 * torch.randn(x.shape, generator=gen, dtype=torch.float64)).clamp(0, 1)
    ours = ms_ssim(x, y)
    theirs = pytorch_msssim.ms_ssim(x, y, data_range=1.0, size_average=False)
    assert torch.allclose(ours, theirs, atol=1e-10)


def test_ms_ssim_on_small_images() -> None:
    assert ms_ssim_levels(28) == (3, 7) and ms_ssim_levels(32) == (3, 7) and ms_ssim_levels(512) == (5, 11)
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(ms_ssim(x, x), torch.ones(3))
    noisy = ms_ssim(x, (x + 0.2 * torch.randn_like(x)).clamp(0, 1))
    assert bool((noisy < 0.9).all())
    assert bool((ms_ssim(x, torch.rand_like(x)) < noisy).all())


def test_linear_probe_separates_separable_codes() -> None:
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(3, (300,), generator=gen)
    codes = torch.nn.functional.one_hot(y, 3).float().repeat(1, 4) + 0.3 * torch.randn(300, 12, generator=gen)
    acc = linear_probe(codes[:200], y[:200], codes[200:], y[200:], 3, epochs=20, lr=1e-2, seed=0)
    assert acc > 0.95
    assert linear_probe(codes[:200], y[:200], codes[200:], y[200:], 3, epochs=20, lr=1e-2, seed=0) == acc


# -- data order and resume --------------------------------------------------------------------------


class _AsDataset(torch.utils.data.Dataset[tuple[torch.Tensor, torch.Tensor]]):
    def __init__(self, split: TensorImages) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.split.images[i], self.split.labels[i]


def test_streamed_batches_equal_in_memory_batches_at_any_step() -> None:
    split = fake_images(50, 1, 8, split=0)
    stream = StreamImages(_AsDataset(split), 8, 10, num_workers=0)
    cpu = torch.device("cpu")
    in_memory = TrainBatches(split, 8, seed=5, device=cpu)
    streamed = TrainBatches(stream, 8, seed=5, device=cpu)
    for step in [0, 1, 2, 13, 7, 8, 30]:  # out of order: the stream restarts at the step
        a, b = in_memory(step), streamed(step)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]), step


def run_keeping_checkpoints(
    cfg: dict[str, Any], into: Path, resume_from: Path | None = None
) -> dict[int, tuple[dict[str, float], Path]]:
    kept: dict[int, tuple[dict[str, float], Path]] = {}

    def report(metrics: dict[str, float], checkpoint: str | None) -> None:
        if checkpoint is not None:  # the directory is removed once report returns: copy it
            step = int(metrics["step"])
            shutil.copytree(checkpoint, into / f"step-{step}")
            kept[step] = (dict(metrics), into / f"step-{step}")

    run_trial(cfg, report=report, checkpoint_dir=str(resume_from) if resume_from else None)
    return kept


@pytest.mark.parametrize("variant", ["dab-bernoulli", "gumbel-vae"])
def test_resume_replays_the_uninterrupted_run(variant: str, tmp_path: Path) -> None:
    # both variants draw from the global RNG in training (bernoulli samples, Gumbel noise)
    cfg = tiny(variant=variant, steps=6, eval_every=3, seed=4)
    straight = run_keeping_checkpoints(cfg, tmp_path / "straight")
    resumed = run_keeping_checkpoints(cfg, tmp_path / "resumed", resume_from=straight[3][1])
    sa = torch.load(straight[6][1] / "trial.pt", weights_only=False)["state"]
    sb = torch.load(resumed[6][1] / "trial.pt", weights_only=False)["state"]
    assert sa["progress"] == sb["progress"] == {"steps": 6}
    for key, value in sa["model"].items():
        assert torch.allclose(value.float(), sb["model"][key].float(), atol=1e-6, rtol=1e-5), key
    m_straight, m_resumed = straight[6][0], resumed[6][0]
    assert "test_linear_accuracy" in m_resumed and "test_linear_accuracy" not in straight[3][0]
    for key in ("train_loss", "train_recon", "test_ms_ssim", "test_recon_loss", "test_linear_accuracy"):
        assert m_resumed[key] == pytest.approx(m_straight[key], rel=1e-5, abs=1e-6), key


def test_evaluation_does_not_disturb_training_randomness() -> None:
    task = task_of(variant="dab-bernoulli")
    before = torch.get_rng_state()
    first = task.evaluate()
    assert torch.equal(torch.get_rng_state(), before)
    assert task.evaluate() == first  # evaluation samples are seeded: the same numbers twice


# -- learning ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variant", "architecture"), [("dab-signum", "unet"), ("dab-binary", "coordconv-dense")]
)
def test_a_tiny_autoencoder_learns(variant: str, architecture: str) -> None:
    reports: list[dict[str, float]] = []
    cfg = tiny(
        variant=variant, architecture=architecture, channels=3, train_size=256, test_size=128,
        batch_size=32, lr=3e-3, steps=30, eval_every=10, probe_epochs=20, probe_every_eval=True,
    )  # fmt: skip
    final = run_trial(cfg, report=lambda m, c: reports.append(m))
    assert reports[-1]["train_recon"] < 0.97 * reports[0]["train_recon"]
    assert reports[-1]["dab_loss"] < reports[0]["dab_loss"]
    assert final["test_ms_ssim"] > reports[0]["test_ms_ssim"]
    assert final["test_linear_accuracy"] > 0.3  # chance is 0.1


def test_threshold_baseline_picks_tau_and_classifies() -> None:
    task = task_of(
        variant="threshold", channels=3, train_size=256, probe_epochs=20, thresholds=[0.3, 0.5, 0.7]
    )
    # 3 x 16 x 16 x 0.1 = 76.8 bits, 25.6 per channel: a 3 x 5 x 5 image
    assert isinstance(task, ThresholdTask) and task.config.code_dim == 3 * 5 * 5
    assert not hasattr(task, "model") and set(task.state()) == {"progress"}
    metrics = task.evaluate()
    assert metrics["threshold_tau"] in (0.3, 0.5, 0.7)
    assert metrics["test_linear_accuracy"] > 0.3
    assert 0 < metrics["test_ms_ssim"] <= 1
    assert task.evaluate() == metrics  # nothing trains: later evaluations give the same numbers
    with pytest.raises(ValueError, match="ThresholdTask"):
        RepresentationTask(task.config, torch.device("cpu"))


def test_threshold_reports_no_training_metric_and_no_throughput() -> None:
    """A task that trains nothing has no samples_per_s (about 10^8 before: it timed nothing)."""
    reports: list[dict[str, float]] = []
    run_trial(tiny(variant="threshold", steps=4, eval_every=2), report=lambda m, _: reports.append(m))
    assert [r["step"] for r in reports] == [2.0, 4.0]
    for r in reports:
        assert "samples_per_s" not in r and "train_loss" not in r and "dab_loss" not in r
        assert {"threshold_tau", "test_ms_ssim", "test_linear_accuracy"} <= set(r)
    assert reports[0] == {**reports[1], "step": 2.0}


@pytest.mark.parametrize("variant", ["dab-signum", "threshold"])
def test_sample_images_gives_inputs_and_reconstructions(variant: str) -> None:
    task = task_of(variant=variant)
    images = task.sample_images(5)
    assert tuple(images.shape) == (2, 5, 1, 16, 16)
    assert torch.equal(images[0], task.test.images[:5].float() / 255)
    assert float(images.min()) >= 0 and float(images.max()) <= 1
    assert not torch.equal(images[0], images[1])


def test_final_checkpoint_carries_the_reconstructions_figure(tmp_path: Path) -> None:
    from PIL import Image

    kept: dict[int, list[str]] = {}

    def report(metrics: dict[str, float], ckpt: str | None) -> None:
        if ckpt is not None:
            art = Path(ckpt) / "artifacts"
            kept[int(metrics["step"])] = sorted(p.name for p in art.iterdir()) if art.is_dir() else []
            if art.is_dir():
                (tmp_path / "reconstructions.png").write_bytes((art / "reconstructions.png").read_bytes())

    run_trial(tiny(steps=4, eval_every=2), report=report)
    assert kept == {2: [], 4: ["reconstructions.png"]}  # only the last checkpoint has artifacts
    with Image.open(tmp_path / "reconstructions.png") as img:
        assert img.size[0] > img.size[1] > 100  # 2 rows of 8 images

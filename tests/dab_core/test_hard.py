"""Values, shapes and non-finite behaviour of every registered hard function."""

from __future__ import annotations

import math
import pickle

import pytest
import torch

from dab_core import hard_functions
from dab_core.hard import HardParamError
from dab_core.registry import UnknownNameError

nan, inf = math.nan, math.inf

BUILTINS = ["bernoulli", "binary", "kmeans", "signum", "sort", "sort_rowcol", "topk"]


def test_registry_lists_builtins() -> None:
    assert set(BUILTINS) <= set(hard_functions.names())


def test_unknown_name_lists_known() -> None:
    with pytest.raises(UnknownNameError, match=r"unknown hard function 'sgn'; known: .*signum"):
        hard_functions.get("sgn")


def test_unknown_parameter_is_named() -> None:
    with pytest.raises(TypeError, match=r"'signum': unknown parameter 'epsilon'; accepts: eps"):
        hard_functions.get("signum", epsilon=0.1)


def test_required_parameter() -> None:
    with pytest.raises(TypeError, match=r"'topk': parameter 'k' is required"):
        hard_functions.get("topk")


def test_parameter_errors_carry_the_parameter() -> None:
    with pytest.raises(HardParamError) as e:
        hard_functions.get("signum", epsilon=0.1)
    assert isinstance(e.value, TypeError)
    assert (e.value.function, e.value.param, e.value.accepted) == ("signum", "epsilon", ("eps",))
    with pytest.raises(HardParamError) as e:
        hard_functions.get("topk")
    assert (e.value.function, e.value.param) == ("topk", "k")
    with pytest.raises(HardParamError) as e:
        hard_functions.get("signum", eps=-1.0).out_shape((3,))
    assert isinstance(e.value, ValueError) and e.value.param == "eps"
    back = pickle.loads(pickle.dumps(e.value))
    assert (type(back), str(back), back.param) == (type(e.value), str(e.value), "eps")


def test_unbatched_input_is_refused() -> None:
    with pytest.raises(ValueError, match=r"expects a batch of shape \(B, \*features\)"):
        hard_functions.get("signum")(torch.tensor([0.3, 0.9]))


# -- signum ------------------------------------------------------------------------------------


def test_signum_values_and_margin() -> None:
    f = hard_functions.get("signum")
    x = torch.tensor([[-2.0, -0.5, -0.49, 0.0, 0.5, 0.51, 3.0]])
    assert f(x).tolist() == [[-1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0]]
    f0 = hard_functions.get("signum", eps=0.0)
    assert f0(torch.tensor([[-1e-7, 0.0, 1e-7]])).tolist() == [[-1.0, 0.0, 1.0]]


def test_signum_matches_the_papers_reference_bit_for_bit() -> None:
    torch.manual_seed(0)
    x = torch.randn(33, 7, 5)
    ref = torch.zeros_like(x)  # appendix 7.1 SignumWithMargin._hard_fn
    ref[x < -0.5] = -1
    ref[x > 0.5] = 1
    out = hard_functions.get("signum")(x)
    assert torch.equal(out, ref)
    assert out.dtype == x.dtype and out.shape == x.shape


def test_signum_non_finite() -> None:
    out = hard_functions.get("signum")(torch.tensor([[nan, inf, -inf, 0.2]]))
    assert math.isnan(out[0, 0]) and out[0, 1:].tolist() == [1.0, -1.0, 0.0]


def test_signum_negative_eps_refused() -> None:
    with pytest.raises(ValueError, match="eps must be >= 0"):
        hard_functions.get("signum", eps=-1.0)(torch.zeros(2, 2))


# -- binary ------------------------------------------------------------------------------------


def test_binary_thresholds_at_each_samples_own_mean() -> None:
    f = hard_functions.get("binary")
    x = torch.tensor([[1.0, 2.0, 3.0, 6.0], [10.0, 10.0, 10.0, 10.0]])  # means 3 and 10
    assert f(x).tolist() == [[0.0, 0.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]]


def test_binary_mean_over_all_feature_dims_and_batch_independence() -> None:
    torch.manual_seed(1)
    x = torch.randn(4, 3, 5, 5)
    f = hard_functions.get("binary")
    out = f(x)
    for b in range(4):
        assert torch.equal(out[b], (x[b] >= x[b].mean()).float())
        assert torch.equal(f(x[b : b + 1])[0], out[b])  # batch of 1 gives the same


def test_binary_non_finite() -> None:
    f = hard_functions.get("binary")
    out = f(torch.tensor([[1.0, nan, 3.0], [1.0, inf, 3.0], [-inf, inf, 0.0]]))
    assert torch.isnan(out[0]).all()  # NaN mean -> whole sample NaN
    assert out[1].tolist() == [0.0, 1.0, 0.0]  # mean +inf: only the +inf entry reaches it
    assert torch.isnan(out[2]).all()  # -inf + inf -> NaN mean


# -- sorts -------------------------------------------------------------------------------------


def test_sort_flattens_sorts_and_keeps_shape() -> None:
    f = hard_functions.get("sort")
    x = torch.tensor([[[3.0, 1.0], [4.0, 2.0]]])  # (1, 2, 2)
    out = f(x)
    assert out.shape == x.shape
    assert out.flatten().tolist() == [1.0, 2.0, 3.0, 4.0]
    assert hard_functions.get("sort", descending=True)(x).flatten().tolist() == [4.0, 3.0, 2.0, 1.0]
    assert f.out_shape((3, 4, 4)) == (3, 4, 4)


def test_sort_non_finite_order() -> None:
    out = hard_functions.get("sort")(torch.tensor([[nan, 1.0, -inf, inf]]))
    assert out[0, :3].tolist() == [-inf, 1.0, inf] and math.isnan(out[0, 3])


def test_sort_rowcol_concatenates_row_and_column_sorts() -> None:
    f = hard_functions.get("sort_rowcol")
    x = torch.tensor([[[3.0, 1.0, 2.0], [0.0, 5.0, 4.0]]])  # (1, 2, 3): 2 rows, 3 columns
    out = f(x)
    rows = [1.0, 2.0, 3.0, 0.0, 4.0, 5.0]
    cols = [0.0, 1.0, 2.0, 3.0, 5.0, 4.0]  # each column sorted, read row-major
    assert out.tolist() == [rows + cols]
    assert f.out_shape((2, 3)) == (12,)
    assert f.out_shape((8, 4, 4)) == (256,)


def test_sort_rowcol_keeps_channels_apart() -> None:
    torch.manual_seed(2)
    x = torch.randn(2, 3, 4, 5)
    out = hard_functions.get("sort_rowcol")(x)
    n = 3 * 4 * 5
    assert out.shape == (2, 2 * n)
    assert torch.equal(out[:, :n], x.sort(dim=-1).values.flatten(1))
    assert torch.equal(out[:, n:], x.sort(dim=-2).values.flatten(1))


def test_sort_rowcol_needs_two_feature_dims() -> None:
    f = hard_functions.get("sort_rowcol")
    with pytest.raises(ValueError, match="at least 2 feature dimensions"):
        f(torch.randn(4, 7))
    with pytest.raises(ValueError, match="at least 2 feature dimensions"):
        f.out_shape((7,))


def test_topk_is_the_first_k_of_sort_rowcol() -> None:
    torch.manual_seed(3)
    x = torch.randn(5, 2, 3, 3)
    f = hard_functions.get("topk", k=4)
    assert f.out_shape((2, 3, 3)) == (4,)
    assert torch.equal(f(x), hard_functions.get("sort_rowcol", descending=True)(x)[:, :4])
    asc = hard_functions.get("topk", k=4, descending=False)
    assert torch.equal(asc(x), hard_functions.get("sort_rowcol")(x)[:, :4])


def test_topk_largest_reads_every_channel() -> None:
    """Table 2's map: k = 512 of a 512x4x4 map. The literal reading keeps channels 0-31's rows;
    the k-largest reading takes the largest values wherever they are."""
    torch.manual_seed(5)
    x = torch.randn(2, 512, 4, 4)
    x[:, 511] += 100.0  # the last channel holds the 16 largest values of each sample
    largest = hard_functions.get("topk", k=512, reading="largest")
    out = largest(x)
    assert largest.out_shape((512, 4, 4)) == (512,) and out.shape == (2, 512)
    expected = x.flatten(1).sort(dim=1, descending=True).values[:, :512]
    assert torch.equal(out, expected)
    assert (out[:, :16] > 50).all()  # channel 511 reached the classifier
    literal = hard_functions.get("topk", k=512)(x)
    rows = x.sort(dim=-1, descending=True).values.flatten(1)[:, :512]
    assert torch.equal(literal, rows) and not (literal > 50).any()  # only channels 0-31's rows
    with pytest.raises(ValueError, match=r"reading must be one of rowcol, largest"):
        hard_functions.get("topk", k=2, reading="biggest").out_shape((2, 3, 3))
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 18\].*'largest'"):
        hard_functions.get("topk", k=19, reading="largest").out_shape((2, 3, 3))
    with pytest.raises(ValueError, match="descending applies to 'rowcol' only"):
        hard_functions.get("topk", k=2, reading="largest", descending=False).out_shape((2, 3, 3))


@pytest.mark.parametrize("k", [0, 37, 2.5, True])
def test_topk_bad_k(k: object) -> None:
    with pytest.raises(ValueError, match=r"topk: k must be an integer in \[1, 36\]"):
        hard_functions.get("topk", k=k).out_shape((2, 3, 3))


# -- kmeans ------------------------------------------------------------------------------------


def test_kmeans_recovers_well_separated_levels() -> None:
    f = hard_functions.get("kmeans", k=3)
    x = torch.tensor([[0.0, 0.2, 10.0, 10.2, 20.0, 20.2, 0.1, 10.1]])
    assert f(x)[0].tolist() == pytest.approx([0.1, 0.1, 10.1, 10.1, 20.1, 20.1, 0.1, 10.1])


def test_kmeans_shape_batch_independence_and_levels() -> None:
    torch.manual_seed(4)
    x = torch.randn(6, 4, 5, 5)
    f = hard_functions.get("kmeans", k=10)
    out = f(x)
    assert out.shape == x.shape
    for b in range(6):
        assert out[b].unique().numel() <= 10
        assert torch.equal(f(x[b : b + 1])[0], out[b])
    # Every value maps to its nearest centroid.
    levels = out[0].unique()
    nearest = levels[(x[0].reshape(-1, 1) - levels).abs().argmin(dim=1)]
    assert torch.equal(nearest, out[0].reshape(-1))


def test_kmeans_more_clusters_than_values_and_single_value() -> None:
    assert hard_functions.get("kmeans", k=10)(torch.tensor([[1.0, 2.0, 3.0]])).tolist() == [[1.0, 2.0, 3.0]]
    assert hard_functions.get("kmeans", k=2)(torch.tensor([[5.0]])).tolist() == [[5.0]]


def test_kmeans_non_finite_sample_is_nan_others_untouched() -> None:
    f = hard_functions.get("kmeans", k=2)
    x = torch.tensor([[0.0, 1.0, inf, 2.0], [0.0, 0.1, 5.0, 5.1]])
    out = f(x)
    assert torch.isnan(out[0]).all()
    assert out[1].tolist() == pytest.approx([0.05, 0.05, 5.05, 5.05])


def test_kmeans_bad_k() -> None:
    with pytest.raises(ValueError, match="kmeans: k must be an integer >= 1"):
        hard_functions.get("kmeans", k=0)(torch.zeros(1, 3))


# -- bernoulli ---------------------------------------------------------------------------------


def test_bernoulli_is_binary_with_sigmoid_mean() -> None:
    torch.manual_seed(5)
    x = torch.full((20000, 3), 0.0)
    x[:, 1] = 2.0
    x[:, 2] = -1.0
    out = hard_functions.get("bernoulli")(x)
    assert set(out.unique().tolist()) <= {0.0, 1.0}
    means = out.mean(dim=0)
    expected = torch.sigmoid(torch.tensor([0.0, 2.0, -1.0]))
    assert torch.allclose(means, expected, atol=0.02)


def test_bernoulli_follows_the_global_rng() -> None:
    x = torch.randn(8, 16)
    torch.manual_seed(6)
    a = hard_functions.get("bernoulli")(x)
    torch.manual_seed(6)
    assert torch.equal(a, hard_functions.get("bernoulli")(x))


def test_bernoulli_non_finite() -> None:
    out = hard_functions.get("bernoulli")(torch.tensor([[nan, inf, -inf]]))
    assert math.isnan(out[0, 0]) and out[0, 1:].tolist() == [1.0, 0.0]


# -- common properties -------------------------------------------------------------------------


@pytest.mark.parametrize("name", BUILTINS)
@pytest.mark.parametrize("shape", [(1, 1, 2), (1, 3, 5), (7, 2, 3, 3)])
def test_out_shape_matches_result_for_odd_shapes_and_batch_1(name: str, shape: tuple[int, ...]) -> None:
    params = {"k": 2} if name == "topk" else {}
    f = hard_functions.get(name, **params)
    x = torch.randn(*shape)
    out = f(x)
    assert out.shape == (shape[0], *f.out_shape(shape[1:]))
    assert out.dtype == x.dtype


@pytest.mark.parametrize("name", ["binary", "kmeans", "signum", "sort", "sort_rowcol"])
def test_deterministic_functions_are_batch_independent(name: str) -> None:
    torch.manual_seed(7)
    x = torch.randn(5, 3, 4)
    f = hard_functions.get(name)
    whole = f(x)
    parts = torch.cat([f(x[i : i + 1]) for i in range(5)])
    assert torch.equal(whole, parts)


def test_user_registration_by_decorator_and_duplicates() -> None:
    @hard_functions.register("test_clip01", elementwise=True)
    def clip01(x: torch.Tensor, lo: float = 0.0) -> torch.Tensor:
        return x.clamp(lo, 1.0)

    try:
        f = hard_functions.get("test_clip01", lo=0.5)
        assert f.elementwise and f(torch.tensor([[0.0, 2.0]])).tolist() == [[0.5, 1.0]]
        with pytest.raises(ValueError, match="already registered"):
            hard_functions.register("test_clip01")(clip01)
    finally:
        hard_functions.remove("test_clip01")
    assert "test_clip01" not in hard_functions

import pytest
import torch
import torch.nn.functional as F

from world_models.math import (dreamer_bins, simnorm, soft_cross_entropy, symexp, symlog, tdmpc_bins, two_hot,
                               two_hot_decode, two_hot_log_likelihood)


def test_symlog_and_symexp_are_inverse_and_match_the_definition():
    x = torch.tensor([-1e4, -3.5, -1.0, 0.0, 0.25, 7.0, 1e4], dtype=torch.float64)
    torch.testing.assert_close(symexp(symlog(x)), x)
    torch.testing.assert_close(symlog(x), torch.sign(x) * torch.log(torch.abs(x) + 1))


def test_dreamer_bins_are_symexp_of_an_even_grid():
    bins = dreamer_bins()
    assert bins.shape == (255,) and abs(bins[127]) < 1e-5
    torch.testing.assert_close(symlog(bins), torch.linspace(-20, 20, 255), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("bins,to_bins,from_bins", [
    (dreamer_bins().double(), lambda x: x, lambda y: y),
    (tdmpc_bins().double(), symlog, symexp),
])
def test_two_hot_round_trips_and_puts_mass_on_two_neighbours(bins, to_bins, from_bins):
    values = torch.tensor([-900.0, -12.3, -1.0, 0.0, 0.37, 2.0, 55.5, 4000.0], dtype=torch.float64)
    encoded = two_hot(to_bins(values), bins)
    assert encoded.shape == (8, len(bins))
    torch.testing.assert_close(encoded.sum(-1), torch.ones(8, dtype=torch.float64))
    assert ((encoded > 0).sum(-1) <= 2).all()
    nonzero = [torch.nonzero(row).flatten() for row in encoded]
    assert all(len(idx) == 1 or idx[1] - idx[0] == 1 for idx in nonzero)
    torch.testing.assert_close(from_bins(two_hot_decode(encoded, bins)), values, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("bins", [dreamer_bins(), tdmpc_bins()], ids=["dreamer", "tdmpc"])
def test_a_uniform_distribution_decodes_to_zero_in_float32(bins):
    # A zero-initialised reward head or critic predicts the uniform distribution; a plain float32
    # sum over DreamerV3's bins gives -0.316 for it.
    uniform = torch.full((3, len(bins)), 1.0 / len(bins))
    assert two_hot_decode(uniform, bins).abs().max() < 1e-6
    # The order of the sum changes nothing else: a peaked distribution still decodes to its value.
    assert abs(two_hot_decode(two_hot(torch.tensor([2.5]), bins), bins).item() - 2.5) < 1e-5


def test_two_hot_clamps_out_of_range_values_to_the_end_bins():
    bins = tdmpc_bins()
    encoded = two_hot(torch.tensor([-50.0, 50.0]), bins)
    assert encoded[0, 0] == 1 and encoded[1, -1] == 1


def test_soft_cross_entropy_equals_cross_entropy_for_one_hot_targets():
    logits = torch.randn(4, 10, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 3, 9, 5])
    torch.testing.assert_close(soft_cross_entropy(logits, F.one_hot(labels, 10).float()),
                               F.cross_entropy(logits, labels, reduction="none"))


def test_simnorm_groups_sum_to_one():
    x = torch.randn(3, 5, 64, generator=torch.Generator().manual_seed(1))
    y = simnorm(x, group_size=8)
    assert y.shape == x.shape and (y >= 0).all()
    torch.testing.assert_close(y.reshape(3, 5, 8, 8).sum(-1), torch.ones(3, 5, 8))


def test_a_stacked_mlp_copy_is_the_plain_mlp_with_that_copys_weights():
    from world_models.layers import StackedMLP

    g = torch.Generator().manual_seed(0)
    q = StackedMLP((2, 5), 12, [16], 3)
    with torch.no_grad():
        for p in q.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    x = torch.randn(2, 5, 3, 4, 12, generator=g)
    out = q(x)
    assert out.shape == (2, 5, 3, 4, 3)
    assert not torch.allclose(out[1, 0], out[1, 1])
    # Copy (1, 2) is Linear -> LayerNorm -> Mish -> Linear with its own weights.
    (first, last), norm = q.linears, q.norms[0]
    hidden = F.mish(F.layer_norm(x[1, 2] @ first.weight[1, 2] + first.bias[1, 2], (16,)) * norm.weight[1, 2]
                    + norm.bias[1, 2])
    torch.testing.assert_close(out[1, 2], hidden @ last.weight[1, 2] + last.bias[1, 2])
    mask = (torch.rand(2, 5, 3, 4, 16, generator=g) > 0.5).float() * 2
    dropped = q(x, dropout_mask=mask)
    hidden = F.mish(F.layer_norm((x[0, 1] @ first.weight[0, 1] + first.bias[0, 1]) * mask[0, 1], (16,))
                    * norm.weight[0, 1] + norm.bias[0, 1])
    torch.testing.assert_close(dropped[0, 1], hidden @ last.weight[0, 1] + last.bias[0, 1])


def test_two_hot_log_likelihood_is_the_dense_two_hot_cross_entropy_and_its_gradient():
    torch.manual_seed(0)
    bins = dreamer_bins()
    values = torch.tensor([-1e9, -37.5, -0.3, 0.0, 2.5, 480.0, 1e9])
    logits = torch.randn(len(values), len(bins), requires_grad=True)
    dense = soft_cross_entropy(logits, two_hot(values, bins))
    (dense_grad,) = torch.autograd.grad(dense.sum(), logits)
    sparse = -two_hot_log_likelihood(F.log_softmax(logits, -1), values, bins)
    (sparse_grad,) = torch.autograd.grad(sparse.sum(), logits)
    torch.testing.assert_close(sparse, dense)
    torch.testing.assert_close(sparse_grad, dense_grad)

"""unit_lower_inverse against torch.linalg.inv in float64."""

import pytest
import torch

from statewise.ops.triangular import unit_lower_inverse


@pytest.mark.parametrize("size", [1, 2, 3, 7, 8, 33, 64])
def test_equals_the_inverse_and_reads_only_the_strict_lower_triangle(size):
    g = torch.Generator().manual_seed(size)
    # entries of size ~0.2: a random unit lower triangular matrix with O(1) entries has an
    # inverse with entries up to ~1e13 at C = 64, where even LAPACK's inverse has no digits
    a = 0.2 * torch.randn(2, 3, size, size, generator=g, dtype=torch.float64)
    unit = a.tril(-1) + torch.eye(size, dtype=torch.float64)
    got = unit_lower_inverse(a)  # diagonal and upper triangle of a hold noise: ignored
    torch.testing.assert_close(got, torch.linalg.inv(unit), rtol=1e-10, atol=1e-10)
    assert got.shape == a.shape


def test_float32_delta_rule_chunk_matrix_is_accurate():
    """The delta rule's (I + A), A = tril(beta K K^T, -1) with unit keys and beta in (0, 2):
    entries of A up to 2 in size, so the inverse's entries are far larger than A's."""
    g = torch.Generator().manual_seed(0)
    k = torch.nn.functional.normalize(torch.randn(64, 64, 16, generator=g), dim=-1)
    beta = 2 * torch.rand(64, 64, 1, generator=g)
    a = beta * (k @ k.transpose(-1, -2))
    want = torch.linalg.inv(a.double().tril(-1) + torch.eye(64, dtype=torch.float64))
    got = unit_lower_inverse(a)
    scale = want.abs().amax((-1, -2), keepdim=True)
    assert ((got.double() - want).abs() / scale).max() < 1e-5


def test_gradcheck():
    a = torch.randn(2, 5, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(unit_lower_inverse, (a,))


def test_refuses_a_non_square_matrix():
    with pytest.raises(ValueError, match="square"):
        unit_lower_inverse(torch.zeros(3, 4))

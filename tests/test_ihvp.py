"""The IHVP-error measurement (evaluation.ihvp) on a case with a known answer: one linear
layer and one training example, where K-FAC and EK-FAC equal the exact damped Gauss-Newton
matrix and identity's error follows from a dense solve."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, jacrev

from influence_core.curvature.gradients import TrackedModel
from influence_core.data.datasets import ImageDataset
from influence_core.evaluation.ihvp import exact_layers, ihvp_errors_vs_exact

EXACT_TOL = 1e-8  # float64 round-off where the Kronecker factorisation is exact


def _one_example() -> tuple[nn.Module, ImageDataset]:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).double()
    x, y = torch.randn(1, 1, 2, 2, dtype=torch.float64), torch.tensor([1])
    data = ImageDataset("toy", "train", ["0", "1", "2"], y, (0.0,), (1.0,),
                        pixels=torch.zeros(1, 2, 2, dtype=torch.uint8))
    data.tensor = lambda idx: x[idx]  # exact float64 inputs instead of uint8 pixels
    return model, data


def _dense_identity_error(model: nn.Module, data: ImageDataset, multiple: float) -> float:
    """Independent oracle: G = J^T (diag(p) - p p^T) J, lambda = multiple x 0.1 trace(G) / p,
    v = the example's loss gradient; identity's IHVP is v itself."""
    tracked = TrackedModel(model)
    theta, x, y = tracked.flat_params(), data.tensor(torch.arange(1)), data.labels

    def logits(flat: torch.Tensor) -> torch.Tensor:
        return functional_call(model, tracked.as_params(flat), (x,))

    jac = jacrev(logits)(theta)[0]  # (K, p)
    p = logits(theta).softmax(1)[0]
    g = jac.T @ (torch.diag(p) - torch.outer(p, p)) @ jac
    lam = multiple * 0.1 * float(g.trace()) / len(g)
    v = grad(lambda flat: nn.functional.cross_entropy(logits(flat), y))(theta)
    want = torch.linalg.solve(g + lam * torch.eye(len(g), dtype=g.dtype), v)
    return float((v - want).norm() / want.norm())


def test_kronecker_estimators_are_exact_and_identity_matches_a_dense_solve() -> None:
    model, data = _one_example()
    res = ihvp_errors_vs_exact(model, data, ("ekfac", "kfac", "exact", "identity"), probes=4,
                               multiples=(1.0, 100.0))
    assert res["layers"] == ["1"] and res["num_params"] == 15 and res["probes"] == 1
    assert list(res["by_damping"]) == [1.0, 100.0]
    first, second = res["by_damping"][1.0], res["by_damping"][100.0]
    assert second["damping"] == pytest.approx(100 * first["damping"])
    for row, multiple in ((first, 1.0), (second, 100.0)):
        for method in ("ekfac", "kfac", "exact"):
            assert row[method] < EXACT_TOL, (multiple, method, row[method])
        want = _dense_identity_error(model, data, multiple)
        assert row["identity"] == pytest.approx(want, rel=1e-6)


def test_exact_layers_keeps_the_last_layers_that_fit() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    assert exact_layers(model) == ["1", "3"]  # 25 + 18 parameters
    assert exact_layers(model, 43) == ["1", "3"]
    assert exact_layers(model, 42) == ["3"]
    assert exact_layers(model, 1) == ["3"]  # at least the last layer

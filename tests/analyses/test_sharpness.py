"""Sharpness measures: power iteration against the exact Hessian; SAM at a convex minimum."""

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call

from ies.experiments.sharpness import hessian_top_eigenvalue, hessian_vector_product, sam_value


def _tiny_mlp_problem(train_steps: int = 300):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x = torch.randn(64, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (64,))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(train_steps):  # towards a minimum, where the Hessian is close to PSD
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model, x, y


def _exact_hessian(model: nn.Module, x, y) -> torch.Tensor:
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])

    def loss(theta):
        params, o = {}, 0
        for n, s in zip(names, shapes):
            k = math.prod(s)
            params[n] = theta[o:o + k].view(s)
            o += k
        return nn.functional.cross_entropy(functional_call(model, params, (x,)), y)

    return torch.autograd.functional.hessian(loss, flat)


def test_power_iteration_matches_exact_top_eigenvalue():
    model, x, y = _tiny_mlp_problem()
    eig = torch.linalg.eigvalsh(_exact_hessian(model, x, y))
    top = float(eig[eig.abs().argmax()])  # power iteration finds the largest magnitude
    assert top > 0
    est20 = hessian_top_eigenvalue(model, x, y, iters=20)  # the analysis' setting
    assert abs(est20 - top) / abs(top) < 1e-3
    est = hessian_top_eigenvalue(model, x, y, iters=200)
    assert abs(est - top) / abs(top) < 1e-8
    # Chunked HVPs give the full-set Hessian, not a per-chunk one.
    assert abs(hessian_top_eigenvalue(model, x, y, iters=200, batch_size=10) - top) / abs(top) < 1e-8


def test_hvp_matches_exact_hessian_times_vector():
    model, x, y = _tiny_mlp_problem(train_steps=0)
    h = _exact_hessian(model, x, y)
    torch.manual_seed(1)
    v = [torch.randn_like(p) for p in model.parameters()]
    hv = torch.cat([t.flatten() for t in hessian_vector_product(model, x, y, v, batch_size=7)])
    assert torch.allclose(hv, h @ torch.cat([t.flatten() for t in v]), atol=1e-10)


def test_measurements_leave_the_model_untouched():
    model, x, y = _tiny_mlp_problem(train_steps=5)
    model.train()
    before = [p.detach().clone() for p in model.parameters()]
    grads = [p.grad.clone() for p in model.parameters()]  # left by the training steps
    hessian_top_eigenvalue(model, x, y, iters=3)
    s = sam_value(model, x, y, rho=0.05)
    assert math.isfinite(s)
    assert model.training and all(torch.equal(g, p.grad) for g, p in zip(grads, model.parameters()))
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))


def _least_squares_at_minimum():
    torch.manual_seed(0)
    x = torch.randn(100, 5, dtype=torch.float64)
    t = x @ torch.randn(5, 1, dtype=torch.float64) + 0.3 * torch.randn(100, 1, dtype=torch.float64)
    model = nn.Linear(5, 1).double()
    xa = torch.cat([x, torch.ones(100, 1, dtype=torch.float64)], 1)
    sol = torch.linalg.lstsq(xa, t).solution  # the exact minimum of the convex MSE
    with torch.no_grad():
        model.weight.copy_(sol[:5].T)
        model.bias.copy_(sol[5])
    return model, x, t, xa


def test_sam_value_non_negative_at_convex_minimum():
    model, x, t, xa = _least_squares_at_minimum()
    mse = nn.functional.mse_loss
    s = sam_value(model, x, t, rho=0.05, loss_fn=mse)
    # Quadratic loss: L(w* + e) - L(w*) = e^T H e / 2 with ||e|| = rho, H = 2 X^T X / n.
    lam_max = float(torch.linalg.eigvalsh(2 * xa.T @ xa / x.shape[0])[-1])
    assert 0.0 <= s <= 0.5 * 0.05 ** 2 * lam_max * (1 + 1e-6)
    # Power iteration on the same convex problem gives the top eigenvalue of 2 X^T X / n.
    assert hessian_top_eigenvalue(model, x, t, iters=200, loss_fn=mse) == pytest.approx(lam_max, rel=1e-6)


def test_sam_value_non_negative_for_regularised_logistic_regression():
    torch.manual_seed(0)
    x = torch.randn(200, 3, dtype=torch.float64)
    y = (x[:, 0] + 0.5 * torch.randn(200, dtype=torch.float64) > 0).long()
    model = nn.Linear(3, 2).double()
    lam = 1e-2

    def loss_fn(out, yy):
        return nn.functional.cross_entropy(out, yy) + lam * sum((p ** 2).sum() for p in model.parameters())

    opt = torch.optim.LBFGS(model.parameters(), max_iter=200, tolerance_grad=1e-12, tolerance_change=1e-15)

    def closure():
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        return loss

    opt.step(closure)
    for p in model.parameters():
        p.grad = None
    for rho in (0.05, 0.5):
        assert sam_value(model, x, y, rho=rho, loss_fn=loss_fn) >= 0.0


def test_sam_value_rejects_negative_rho_and_handles_zero_gradient():
    model, x, t, _ = _least_squares_at_minimum()
    with pytest.raises(ValueError):
        sam_value(model, x, t, rho=-1.0, loss_fn=nn.functional.mse_loss)
    zero = nn.Linear(2, 1).double()
    nn.init.zeros_(zero.weight)
    nn.init.zeros_(zero.bias)
    assert sam_value(zero, torch.zeros(4, 2, dtype=torch.float64), torch.zeros(4, 1, dtype=torch.float64),
                     loss_fn=nn.functional.mse_loss) == 0.0


def test_top_eigenvalue_is_the_largest_algebraic_when_negative_curvature_dominates():
    # Quadratic loss 0.5 w^T A w with eigenvalues -3, 1, 2: the largest magnitude is -3.
    model = torch.nn.Linear(3, 1, bias=False).double()
    a = torch.diag(torch.tensor([-3.0, 1.0, 2.0], dtype=torch.float64))

    def loss_fn(out, y):
        w = model.weight.flatten()
        return 0.5 * w @ a @ w + 0.0 * out.sum()

    x, y = torch.zeros(2, 3, dtype=torch.float64), torch.zeros(2, 1, dtype=torch.float64)
    assert hessian_top_eigenvalue(model, x, y, iters=300, loss_fn=loss_fn, largest="magnitude") == pytest.approx(-3.0)
    assert hessian_top_eigenvalue(model, x, y, iters=300, loss_fn=loss_fn) == pytest.approx(2.0, rel=1e-6)


@pytest.mark.parametrize("measure", [
    lambda m, x, y: hessian_top_eigenvalue(m, x, y, iters=2),
    lambda m, x, y: sam_value(m, x, y),
    lambda m, x, y: hessian_vector_product(m, x, y, [torch.zeros_like(p) for p in m.parameters()]),
])
def test_an_empty_sample_set_is_refused_with_the_fix(measure):
    model = nn.Linear(3, 2)
    with pytest.raises(ValueError, match="at least one sample"):
        measure(model, torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))

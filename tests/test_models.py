import math

import pytest
import torch

from vaectl.models import build_model
from vaectl.objectives import bernoulli_nll, gaussian_kl, iwae_log_likelihood, loss_terms


@pytest.mark.parametrize("kind", ["vae", "ae"])
def test_shapes(kind):
    model = build_model(kind, "mlp", [64, 32], 5)
    logits, mu, logvar, z = model(torch.rand(7, 28, 28))
    assert logits.shape == (7, 784) and mu.shape == (7, 5) and z.shape == (7, 5)
    assert (logvar is None) == (kind == "ae")


def test_same_skeleton_same_capacity_except_the_head():
    vae, ae = build_model("vae", "mlp", [64, 32], 5), build_model("ae", "mlp", [64, 32], 5)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(vae) - count(ae) == 32 * 5 + 5  # the extra log-variance outputs


def test_vae_head_can_be_negative():
    model = build_model("vae", "mlp", [16], 3)
    torch.nn.init.constant_(model.head.bias, -2.0)
    mu, logvar = model.encode(torch.zeros(1, 784))
    assert (mu < 0).all() and (logvar < 0).all()


def test_bernoulli_nll_known_values():
    logits = torch.zeros(2, 784)  # p = 0.5 everywhere: -log p(x) = 784 log 2 for any x
    x = torch.randint(0, 2, (2, 784)).float()
    torch.testing.assert_close(bernoulli_nll(logits, x), torch.full((2,), 784 * math.log(2)))
    confident = torch.full((1, 784), 50.0)
    assert bernoulli_nll(confident, torch.ones(1, 784)).item() < 1e-15 * 784 + 1e-12


def test_kl_known_values():
    assert gaussian_kl(torch.zeros(1, 4), torch.zeros(1, 4)).item() == 0.0
    # KL(N(1, 1) || N(0, 1)) = 0.5 per dim; KL(N(0, e^2) || N(0,1)) = 0.5 (e^2 - 1 - 2) per dim
    torch.testing.assert_close(gaussian_kl(torch.ones(1, 3), torch.zeros(1, 3)), torch.tensor([1.5]))
    torch.testing.assert_close(gaussian_kl(torch.zeros(1, 1), torch.full((1, 1), 2.0)),
                               torch.tensor([0.5 * (math.exp(2) - 3)]))


def test_closed_form_kl_matches_monte_carlo():
    torch.manual_seed(0)
    mu, logvar = torch.randn(1, 6), torch.randn(1, 6) * 0.5
    z = mu + torch.randn(200_000, 6) * torch.exp(0.5 * logvar)
    log_q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar)).log_prob(z).sum(-1)
    log_p = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    mc = (log_q - log_p).mean()
    assert abs(mc.item() - gaussian_kl(mu, logvar).item()) < 0.03


def vae_with_fixed_posterior(mu: list[float], logvar: list[float]):
    """A VAE whose q(z|x) is N(mu, exp(logvar)) for every x and whose decoder says p = 0.5
    for every pixel: every loss term has a closed form."""
    model = build_model("vae", "mlp", [4], len(mu))
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.head.bias.copy_(torch.tensor(mu + logvar))
    return model


def test_training_loss_is_784_ln2_plus_beta_times_the_exact_kl():
    # KL(N(1, 1) || N(0, 1)) = 0.5 per dim; KL(N(0, 4) || N(0, 1)) = 0.5 (4 - 1 - ln 4)
    model = vae_with_fixed_posterior([1.0, 0.0], [0.0, math.log(4.0)])
    kl = 0.5 + 0.5 * (3 - math.log(4.0))
    x = torch.rand(6, 784).round()
    loss, recon, kl_term = loss_terms(model, x, beta=2.0)
    assert recon.item() == pytest.approx(784 * math.log(2), rel=1e-6)
    assert kl_term.item() == pytest.approx(kl, rel=1e-6)
    assert loss.item() == pytest.approx(784 * math.log(2) + 2.0 * kl, rel=1e-6)
    _, recon_ae, kl_ae = loss_terms(build_model("ae", "mlp", [16], 3), x)
    assert kl_ae.item() == 0.0 and recon_ae.item() > 0


def test_training_reparameterisation_draws_from_the_posterior():
    """z = mu + eps * sigma with sigma = exp(logvar / 2): variances 4 and 0.25 here (a
    missing 0.5 would give 16 and 0.0625)."""
    torch.manual_seed(0)
    model = vae_with_fixed_posterior([1.0, -2.0], [math.log(4.0), math.log(0.25)])
    _, _, _, z = model(torch.zeros(40000, 784))
    torch.testing.assert_close(z.mean(0), torch.tensor([1.0, -2.0]), atol=0.03, rtol=0)
    torch.testing.assert_close(z.var(0), torch.tensor([4.0, 0.25]), atol=0.0, rtol=0.03)


def test_iwae_bound_above_elbo_and_grows_with_k():
    torch.manual_seed(0)
    model = build_model("vae", "mlp", [32], 4)
    x = torch.rand(20, 784).round()
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    bounds = [iwae_log_likelihood(model, x, k, chunk=7, generator=gen()).mean().item()
              for k in (1, 10, 100, 1000)]
    assert bounds == sorted(bounds)
    # k = 1 is an unbiased single-sample ELBO estimate: compare with the closed-form ELBO
    mu, logvar = model.encode(x)
    z = mu + torch.randn(4000, *mu.shape) * torch.exp(0.5 * logvar)
    elbo = (-bernoulli_nll(model.decode(z), x).mean(0) - gaussian_kl(mu, logvar)).mean().item()
    assert bounds[-1] > elbo
    assert abs(iwae_log_likelihood(model, x, 1, chunk=1).mean().item() - elbo) < 3.0


def test_iwae_matches_numerical_integration_for_1d_latent():
    """log p(x) = log ∫ p(x|z) p(z) dz on a fine grid vs the IWAE estimate with large k."""
    torch.manual_seed(0)
    model = build_model("vae", "mlp", [8], 1).double()
    x = torch.rand(3, 784, dtype=torch.float64).round()
    grid = torch.linspace(-12, 12, 24001, dtype=torch.float64)
    dz = (grid[1] - grid[0]).item()
    with torch.no_grad():
        log_px_z = -bernoulli_nll(model.decode(grid[:, None])[:, None, :], x[None])  # (G, 3)
        log_pz = -0.5 * (math.log(2 * math.pi) + grid.pow(2))
        exact = torch.logsumexp(log_px_z + log_pz[:, None], dim=0) + math.log(dz)
        estimate = iwae_log_likelihood(model, x, k=20000, chunk=5000,
                                       generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(estimate, exact, atol=0.05, rtol=0)


def test_arch_is_part_of_the_model_and_its_config():
    from vaectl.models import from_config

    model = build_model("vae", "mlp", [16], 3)
    assert model.config() == {"kind": "vae", "arch": "mlp", "hidden": [16], "latent_dim": 3,
                              "logvar_clip": []}
    assert from_config(model.config()).config() == model.config()
    gated = build_model("vae", "gated-mlp", [16, 8], 3, [-6.0, 2.0])
    assert from_config(gated.config()).config() == gated.config()
    with pytest.raises(ValueError, match="unknown model.arch 'conv'"):
        build_model("vae", "conv", [16], 3)


def test_a_gated_layer_multiplies_by_the_sigmoid_of_its_gate():
    """h = x and g = 0 give x * sigmoid(0) = x / 2; g = +-inf open and shut the gate."""
    from vaectl.models import GatedDense

    layer = GatedDense(2, 2)
    with torch.no_grad():
        layer.linear.weight.copy_(torch.cat([torch.eye(2), torch.zeros(2, 2)]))
        layer.linear.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 0.0]))
        torch.testing.assert_close(layer(torch.tensor([[3.0, -4.0]])), torch.tensor([[1.5, -2.0]]))
        layer.linear.bias.copy_(torch.tensor([0.0, 0.0, 100.0, -100.0]))
        torch.testing.assert_close(layer(torch.tensor([[3.0, -4.0]])), torch.tensor([[3.0, 0.0]]))


def test_gated_mlp_is_he_initialised_and_clips_the_log_variance():
    torch.manual_seed(0)
    model = build_model("vae", "gated-mlp", [300, 300], 40, [-6.0, 2.0])
    first = model.encoder[0].linear.weight  # 600 x 784, std sqrt(2 / 784) = 0.0505
    assert first.std().item() == pytest.approx((2 / 784) ** 0.5, rel=0.01)
    assert model.decoder[-1].weight.std().item() == pytest.approx((2 / 300) ** 0.5, rel=0.01)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.cat([torch.zeros(40), torch.full((20,), -10.0), torch.full((20,), 5.0)]))
    _, logvar = model.encode(torch.rand(3, 784))
    assert logvar[:, :20].eq(-6.0).all() and logvar[:, 20:].eq(2.0).all()
    assert build_model("ae", "gated-mlp", [16], 3, [-6.0, 2.0]).config()["logvar_clip"] == []


def test_binary_bernoulli_nll_known_values():
    """Logits 0 cost ln 2 a pixel whatever x; a logit of +-30 costs ~30 when it points the
    wrong way and ~0 when right; a mixed image against float64 softplus."""
    from vaectl.objectives import bernoulli_nll_binary

    x = torch.rand(5, 784).round()
    sign = 1 - 2 * x
    assert bernoulli_nll_binary(torch.zeros(5, 784), sign) == pytest.approx([784 * math.log(2)] * 5)
    wrong, right = 30 * sign, -30 * sign  # sign * logit = +30: p(x) = sigmoid(-30)
    assert bernoulli_nll_binary(wrong, sign) == pytest.approx([784 * 30.0] * 5, rel=1e-6)
    assert bernoulli_nll_binary(right, sign) == pytest.approx([0.0] * 5, abs=1e-6)  # 784 e^-30
    logits = torch.randn(3, 5, 784) * 8  # broadcasts over a leading sample axis
    expected = torch.nn.functional.softplus(logits.double() * sign.double()).sum(-1)
    torch.testing.assert_close(bernoulli_nll_binary(logits, sign).double(), expected, atol=1e-3, rtol=1e-6)


def test_iwae_in_bfloat16_agrees_with_float32():
    torch.manual_seed(0)
    model = build_model("vae", "gated-mlp", [64, 64], 8, [-6.0, 2.0])
    x = torch.rand(50, 784).round()
    full = iwae_log_likelihood(model, x, 200, 25, torch.Generator().manual_seed(1))
    low = iwae_log_likelihood(model, x, 200, 25, torch.Generator().manual_seed(1), torch.bfloat16)
    assert not torch.equal(full, low)  # it did run in bfloat16
    assert abs((full - low).mean().item()) < 0.05
    # the chunk is a speed knob only: same draws, same estimate
    one_chunk = iwae_log_likelihood(model, x, 200, 200, torch.Generator().manual_seed(1))
    torch.testing.assert_close(one_chunk, full)

import math

import pytest
import torch

from vaectl.models import mixture_log_density
from vaectl.objectives import bernoulli_nll, gaussian_kl, iwae_log_likelihood, kl_to_prior, loss_terms
from vaectl.prior import latent_prior, moment_matched, sample_latents

from .tiny import net


@pytest.mark.parametrize("kind", ["vae", "ae"])
def test_shapes(kind):
    model = net(kind, "mlp", [64, 32], 5)
    logits, mu, logvar, z = model(torch.rand(7, 28, 28))
    assert logits.shape == (7, 784) and mu.shape == (7, 5) and z.shape == (7, 5)
    assert (logvar is None) == (kind == "ae")


def test_same_skeleton_same_capacity_except_the_head():
    vae, ae = net("vae", "mlp", [64, 32], 5), net("ae", "mlp", [64, 32], 5)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(vae) - count(ae) == 32 * 5 + 5  # the extra log-variance outputs


def test_vae_head_can_be_negative():
    model = net("vae", "mlp", [16], 3)
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
    torch.testing.assert_close(
        gaussian_kl(torch.zeros(1, 1), torch.full((1, 1), 2.0)), torch.tensor([0.5 * (math.exp(2) - 3)])
    )


def test_closed_form_kl_matches_monte_carlo():
    torch.manual_seed(0)
    mu, logvar = torch.randn(1, 6), torch.randn(1, 6) * 0.5
    z = mu + torch.randn(200_000, 6) * torch.exp(0.5 * logvar)
    log_q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar)).log_prob(z).sum(-1)
    log_p = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    mc = (log_q - log_p).mean()
    assert abs(mc.item() - gaussian_kl(mu, logvar).item()) < 0.03


def vae_with_fixed_posterior(mu: list[float], logvar: list[float], pseudo_inputs: int = 0):
    """A VAE whose q(z|x) is N(mu, exp(logvar)) for every x and whose decoder says p = 0.5
    for every pixel: every loss term has a closed form."""
    model = net("vae", "mlp", [4], len(mu), pseudo_inputs=pseudo_inputs)
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
    _, recon_ae, kl_ae = loss_terms(net("ae", "mlp", [16], 3), x)
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
    model = net("vae", "mlp", [32], 4)
    x = torch.rand(20, 784).round()
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    bounds = [
        iwae_log_likelihood(model, x, k, chunk=7, generator=gen()).mean().item() for k in (1, 10, 100, 1000)
    ]
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
    model = net("vae", "mlp", [8], 1).double()
    x = torch.rand(3, 784, dtype=torch.float64).round()
    grid = torch.linspace(-12, 12, 24001, dtype=torch.float64)
    dz = (grid[1] - grid[0]).item()
    with torch.no_grad():
        log_px_z = -bernoulli_nll(model.decode(grid[:, None])[:, None, :], x[None])  # (G, 3)
        log_pz = -0.5 * (math.log(2 * math.pi) + grid.pow(2))
        exact = torch.logsumexp(log_px_z + log_pz[:, None], dim=0) + math.log(dz)
        estimate = iwae_log_likelihood(
            model, x, k=20000, chunk=5000, generator=torch.Generator().manual_seed(0)
        )
    torch.testing.assert_close(estimate, exact, atol=0.05, rtol=0)


def test_arch_is_part_of_the_model_and_its_config():
    from vaectl.models import from_config

    model = net("vae", "mlp", [16], 3)
    assert model.config() == {
        "kind": "vae",
        "arch": "mlp",
        "hidden": [16],
        "latent_dim": 3,
        "logvar_clip": [],
        "pseudo_inputs": 0,
    }
    assert from_config(model.config()).config() == model.config()
    gated = net("vae", "gated-mlp", [16, 8], 3, [-6.0, 2.0], pseudo_inputs=7)
    assert from_config(gated.config()).config() == gated.config() and gated.pseudo.shape == (7, 784)
    # a checkpoint's learned pseudo-images load back into the model its config rebuilds
    from_config(gated.config()).load_state_dict(gated.state_dict())
    assert net("ae", "mlp", [16], 3, [-6.0, 2.0], pseudo_inputs=7).config()["pseudo_inputs"] == 0
    with pytest.raises(ValueError, match="unknown model.arch 'transformer'"):
        net("vae", "transformer", [16], 3)


@pytest.mark.parametrize("hidden", [[4, 12], [4, 8, 12]])
def test_the_conv_skeleton_maps_images_to_features_and_latents_of_any_batch_shape_to_logits(hidden):
    """One or two stride-2 convolutions (28 -> 14 -> 7) and back; the decoder takes latents
    shaped (samples, images, D) as the likelihood estimators give them."""
    model = net("vae", "conv", hidden, 3)
    assert model.encoder(torch.rand(5, 784)).shape == (5, 12)
    logits, mu, logvar, _ = model(torch.rand(5, 28, 28))
    assert logits.shape == (5, 784) and mu.shape == logvar.shape == (5, 3)
    z = torch.randn(2, 5, 3)
    torch.testing.assert_close(model.decode(z)[1], model.decode(z[1]))
    assert sum(isinstance(m, torch.nn.Conv2d) for m in model.encoder.modules()) == len(hidden) - 1


@pytest.mark.parametrize("hidden, problem", [([16], "got 1 sizes"), ([4, 4, 4, 16], "got 4 sizes")])
def test_the_conv_skeleton_refuses_sizes_it_cannot_take_in_one_line(hidden, problem):
    from vaectl import UserError
    from vaectl.params import parse_params

    with pytest.raises(UserError, match=f"model.arch conv needs .*{problem}"):
        parse_params({"model": {"arch": "conv", "hidden": hidden}})


def test_a_gated_layer_multiplies_by_the_sigmoid_of_its_gate():
    """h = x and g = 0 give x * sigmoid(0) = x / 2; g = +-inf open and shut the gate."""
    from vaectl.archs.layers import GatedDense

    layer = GatedDense(2, 2)
    with torch.no_grad():
        layer.linear.weight.copy_(torch.cat([torch.eye(2), torch.zeros(2, 2)]))
        layer.linear.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 0.0]))
        torch.testing.assert_close(layer(torch.tensor([[3.0, -4.0]])), torch.tensor([[1.5, -2.0]]))
        layer.linear.bias.copy_(torch.tensor([0.0, 0.0, 100.0, -100.0]))
        torch.testing.assert_close(layer(torch.tensor([[3.0, -4.0]])), torch.tensor([[3.0, 0.0]]))


def test_gated_mlp_is_he_initialised_and_clips_the_log_variance():
    torch.manual_seed(0)
    model = net("vae", "gated-mlp", [300, 300], 40, [-6.0, 2.0])
    first = model.encoder[0].linear.weight  # 600 x 784, std sqrt(2 / 784) = 0.0505
    assert first.std().item() == pytest.approx((2 / 784) ** 0.5, rel=0.01)
    assert model.decoder[-1].weight.std().item() == pytest.approx((2 / 300) ** 0.5, rel=0.01)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.cat([torch.zeros(40), torch.full((20,), -10.0), torch.full((20,), 5.0)]))
    _, logvar = model.encode(torch.rand(3, 784))
    assert logvar[:, :20].eq(-6.0).all() and logvar[:, 20:].eq(2.0).all()
    assert net("ae", "gated-mlp", [16], 3, [-6.0, 2.0]).config()["logvar_clip"] == []


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
    model = net("vae", "gated-mlp", [64, 64], 8, [-6.0, 2.0])
    x = torch.rand(50, 784).round()
    full = iwae_log_likelihood(model, x, 200, 25, torch.Generator().manual_seed(1))
    low = iwae_log_likelihood(model, x, 200, 25, torch.Generator().manual_seed(1), torch.bfloat16)
    assert not torch.equal(full, low)  # it did run in bfloat16
    assert abs((full - low).mean().item()) < 0.05
    # the chunk is a speed knob only: same draws, same estimate
    one_chunk = iwae_log_likelihood(model, x, 200, 200, torch.Generator().manual_seed(1))
    torch.testing.assert_close(one_chunk, full)


def vampprior_vae(latent_dim: int, pseudo_inputs: int, seed: int = 0):
    """A random float64 VAE with a VampPrior on distinct random pseudo-images."""
    torch.manual_seed(seed)
    model = net("vae", "mlp", [8], latent_dim, pseudo_inputs=pseudo_inputs).double()
    with torch.no_grad():
        model.pseudo.uniform_(-0.5, 1.5)  # some pixels outside [0, 1]: the prior clamps them
    return model


def independent_mixture(means, logvars):
    """torch.distributions' own equally weighted mixture of diagonal Gaussians."""
    d = torch.distributions
    return d.MixtureSameFamily(
        d.Categorical(torch.ones(len(means), dtype=means.dtype)),
        d.Independent(d.Normal(means, torch.exp(0.5 * logvars)), 1),
    )


def test_vampprior_is_the_equal_mixture_of_the_clamped_pseudo_images_posteriors():
    model = vampprior_vae(latent_dim=3, pseudo_inputs=5)
    with torch.no_grad():
        means, logvars = model.encode(model.pseudo.clamp(0, 1))
        z = torch.randn(200, 3, dtype=torch.float64) * 3
        torch.testing.assert_close(
            mixture_log_density(z, *model.prior_components()), independent_mixture(means, logvars).log_prob(z)
        )
        assert not torch.allclose(model.prior_components()[0], model.encode(model.pseudo)[0])
    # one standard component: the N(0, I) log-density, -(|z|^2 + D ln 2 pi) / 2
    z = torch.tensor([[0.0, 0.0], [1.0, -2.0]])
    torch.testing.assert_close(
        mixture_log_density(z, torch.zeros(1, 2), torch.zeros(1, 2)),
        torch.tensor([-math.log(2 * math.pi), -2.5 - math.log(2 * math.pi)]),
    )


def test_vampprior_kl_vanishes_when_every_pseudo_image_has_the_datas_posterior():
    """Every input, pseudo-images included, gets q = N(mu, sigma^2): the prior is q itself,
    log q(z) - log p(z) is 0 at every z, and the loss is the reconstruction alone."""
    model = vae_with_fixed_posterior([1.0, -0.5], [0.3, math.log(4.0)], pseudo_inputs=3)
    x = torch.rand(50, 784).round()
    loss, recon, kl = loss_terms(model, x)
    assert abs(kl.item()) < 1e-5 and loss.item() == pytest.approx(784 * math.log(2), rel=1e-6)
    mu, logvar = model.encode(x)
    kl_per_image = kl_to_prior(model.prior_components(), mu, logvar, 10, torch.Generator().manual_seed(0))
    assert kl_per_image.abs().max() < 1e-5


def vae_whose_pseudo_images_encode_to_the_standard_normal():
    """q(z|x) = N((m, m), I) with m the image's mean pixel; pseudo-images clamp to blank
    (m = 0), so the VampPrior is N(0, I) and the KL has its closed form: m^2 per image."""
    model = net("vae", "mlp", [4], 2, pseudo_inputs=3)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.encoder[0][0].weight[0].fill_(1 / 784)  # first hidden unit: the mean pixel
        model.head.weight[0, 0] = model.head.weight[1, 0] = 1.0  # mu = (m, m); log-variance 0
        model.pseudo.fill_(-1.0)
    return model


def test_vampprior_monte_carlo_kl_matches_the_closed_form_in_training_and_evaluation():
    torch.manual_seed(0)
    model = vae_whose_pseudo_images_encode_to_the_standard_normal()
    x = torch.ones(40_000, 784)  # m = 1: KL(N((1, 1), I) || N(0, I)) = 1; one draw's sd is sqrt(2)
    _, _, kl = loss_terms(model, x)
    assert kl.item() == pytest.approx(1.0, abs=0.04)
    mu, logvar = model.encode(torch.full((3, 784), 0.5))  # m = 0.5: KL 0.25
    per_image = kl_to_prior(model.prior_components(), mu, logvar, 40_000, torch.Generator().manual_seed(1))
    torch.testing.assert_close(per_image, torch.full((3,), 0.25), atol=0.02, rtol=0)


def test_iwae_with_a_vampprior_matches_numerical_integration_for_1d_latent():
    """log p(x) = log ∫ p(x|z) (1/K) sum_k q(z|u_k) dz on a fine grid vs the IWAE estimate,
    whose importance weights must use the mixture prior."""
    model = vampprior_vae(latent_dim=1, pseudo_inputs=3)
    x = torch.rand(3, 784, dtype=torch.float64).round()
    grid = torch.linspace(-12, 12, 24001, dtype=torch.float64)
    dz = (grid[1] - grid[0]).item()
    with torch.no_grad():
        log_px_z = -bernoulli_nll(model.decode(grid[:, None])[:, None, :], x[None])  # (G, 3)
        log_pz = independent_mixture(*model.encode(model.pseudo.clamp(0, 1))).log_prob(grid[:, None])
        exact = torch.logsumexp(log_px_z + log_pz[:, None], dim=0) + math.log(dz)
        estimate = iwae_log_likelihood(
            model, x, k=20000, chunk=5000, generator=torch.Generator().manual_seed(0)
        )
        standard = (
            exact
            - torch.logsumexp(log_px_z - 0.5 * (math.log(2 * math.pi) + grid.pow(2))[:, None], dim=0)
            - math.log(dz)
        )
    assert standard.abs().min() > 0.05  # N(0, 1) in the weights would miss by more than the tolerance
    torch.testing.assert_close(estimate, exact, atol=0.02, rtol=0)


def test_prior_samples_come_from_a_uniformly_chosen_component():
    means = torch.tensor([[-10.0], [10.0]])
    chols = torch.tensor([[[1.0]], [[2.0]]])
    z = sample_latents(means, chols, 40_000, torch.Generator().manual_seed(0))[:, 0]
    left, right = z[z < 0], z[z > 0]
    assert len(left) / len(z) == pytest.approx(0.5, abs=0.01)
    assert left.mean().item() == pytest.approx(-10, abs=0.03)
    assert left.std().item() == pytest.approx(1, abs=0.03)
    assert right.mean().item() == pytest.approx(10, abs=0.05)
    assert right.std().item() == pytest.approx(2, abs=0.05)
    # the mixture's one-Gaussian summary: mean 0, variance (1 + 4) / 2 + 10^2 = 102.5
    mean, chol = moment_matched(means, chols)
    assert mean.item() == 0.0 and (chol @ chol.T).item() == pytest.approx(102.5)


def test_a_vampprior_vae_samples_from_its_mixture_and_the_standard_one_from_n01():
    model = vampprior_vae(latent_dim=2, pseudo_inputs=4).float()
    means, chols = latent_prior(model, torch.empty(0, 784))
    with torch.no_grad():
        expected_means, expected_logvars = model.prior_components()
    torch.testing.assert_close(means, expected_means)
    torch.testing.assert_close(torch.diagonal(chols, dim1=1, dim2=2), torch.exp(0.5 * expected_logvars))
    means, chols = latent_prior(net("vae", "mlp", [8], 2), torch.empty(0, 784))
    assert means.tolist() == [[0.0, 0.0]] and chols.tolist() == [[[1.0, 0.0], [0.0, 1.0]]]

"""``evsoftmax reproduce``: the experiments' pieces and their command-line paths.

No test asserts which normalizer wins: the experiment reports that, the tests
check that it runs, writes what it promises and computes its metric right.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
# One worker runs this module, and imports the experiments' stack (scikit-learn,
# matplotlib, rich; ~3 s) when its tests start, not while pytest collects.
pytestmark = pytest.mark.xdist_group("test_reproduce")


@pytest.fixture(scope="module", autouse=True)
def _reproduce_modules() -> None:
    global cli, losses, metric, normalizers, seq2seq, ssvae, tasks, training, transformer
    global vqvae, load, run_cvae, EXACT, QUICK, CVAEOptions, quick
    for name in ("sklearn", "matplotlib", "rich"):
        pytest.importorskip(name)
    from evsoftmax import cli
    from evsoftmax._reproduce import (
        losses,
        metric,
        normalizers,
        seq2seq,
        ssvae,
        tasks,
        training,
        transformer,
        vqvae,
    )
    from evsoftmax._reproduce.data import load
    from evsoftmax._reproduce.experiment import run_cvae
    from evsoftmax._reproduce.options import EXACT, QUICK, CVAEOptions, quick


NAMES = ("softmax", "sparsemax", "entmax15", "ev_softmax")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _distributions(rng, shape):
    p = rng.random(shape) * (rng.random(shape) < 0.6)
    p[..., 0] += 1e-3  # never an all-zero row
    return p / p.sum(-1, keepdims=True)


def test_wasserstein_matches_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    p, q = _distributions(rng, (20, 10)), _distributions(rng, (20, 10))
    support = np.arange(10)
    expected = [
        scipy_stats.wasserstein_distance(support, support, a, b) for a, b in zip(p, q, strict=True)
    ]
    np.testing.assert_allclose(metric.wasserstein_on_digits(p, q), expected, rtol=1e-12)


def test_paper_wasserstein_treats_probabilities_as_points():
    # Two samples of 10 values each: W1 is the mean gap between their sorted values.
    rng = np.random.default_rng(3)
    p, q = _distributions(rng, (7, 10)), _distributions(rng, (7, 10))
    expected = np.abs(np.sort(p, axis=-1) - np.sort(q, axis=-1)).mean(axis=-1)
    np.testing.assert_allclose(metric.paper_wasserstein(p, q), expected, rtol=1e-12)
    # Which digits hold the mass does not matter: a permuted distribution scores the same.
    truth = metric.ground_truth()
    assert metric.paper_wasserstein(truth[1], truth[0]) == pytest.approx(0.0, abs=1e-15)
    assert metric.paper_wasserstein(p[:, ::-1], q).tolist() == pytest.approx(expected.tolist())


def test_total_variation_and_parity_mass():
    truth = metric.ground_truth()
    point = np.eye(10)[[4, 4]]  # both queries put all mass on digit 4
    # TV of a point mass on an even digit: 1 - 0.2 for the even query, 1 for the odd one.
    np.testing.assert_allclose(metric.total_variation(point, truth), [0.8, 1.0])
    np.testing.assert_allclose(metric.parity_mass(point), [1.0, 0.0])
    np.testing.assert_allclose(metric.parity_mass(truth), [1.0, 1.0])


def test_wasserstein_of_a_collapsed_prior():
    # All mass on digit 4 against uniform over {0, 2, 4, 6, 8}: (4 + 2 + 0 + 2 + 4) / 5.
    point = np.eye(10)[4]
    assert metric.wasserstein_on_digits(point, metric.ground_truth()[0]) == pytest.approx(2.4)


def test_ground_truth_is_uniform_over_each_parity():
    truth = metric.ground_truth()
    np.testing.assert_array_equal(truth[0], [0.2, 0, 0.2, 0, 0.2, 0, 0.2, 0, 0.2, 0])
    np.testing.assert_array_equal(truth[1], [0, 0.2, 0, 0.2, 0, 0.2, 0, 0.2, 0, 0.2])


def test_digit_distribution_and_modes():
    prior = np.array([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    labels = np.array([[1.0, 0.0], [0.0, 1.0], [0.25, 0.75]])
    np.testing.assert_allclose(metric.digit_distribution(prior, labels), [[0.5, 0.5], [0.25, 0.75]])
    assert metric.count_modes(prior).tolist() == [2, 1]


def test_mean_and_sem():
    mean, sem = metric.mean_and_sem([1.0, 2.0, 3.0, 6.0])
    assert mean == pytest.approx(3.0)
    assert sem == pytest.approx(np.std([1, 2, 3, 6], ddof=1) / 2)
    assert math.isnan(float(metric.mean_and_sem([1.0])[1]))


@pytest.mark.parametrize(
    ("name", "peer", "alpha"),
    [("sparsemax", "sparsemax_loss", 2.0), ("entmax15", "entmax15_loss", 1.5)],
)
def test_fenchel_young_matches_entmax_losses(name, peer, alpha):
    entmax = pytest.importorskip("entmax")
    logits = torch.randn(6, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    target = torch.arange(6) % 10
    one_hot = torch.nn.functional.one_hot(target, 10).double()
    ours = losses.fenchel_young(logits, one_hot, normalizers.lookup(name), alpha)
    expected = getattr(entmax, peer)(logits, target)
    torch.testing.assert_close(ours, expected, rtol=1e-9, atol=1e-9)


def test_fenchel_young_gradient_is_prediction_minus_target():
    logits = torch.randn(4, 10, dtype=torch.float64, requires_grad=True)
    target = torch.softmax(torch.randn(4, 10, dtype=torch.float64), -1)
    sparsemax = normalizers.lookup("sparsemax")
    losses.fenchel_young(logits, target, sparsemax, 2.0).sum().backward()
    torch.testing.assert_close(logits.grad, sparsemax(logits.detach()) - target)


def test_smoothed_kl_matches_the_papers_formula():
    # The paper's code: KL of OneHotCategorical(probs=p + 1e-6), which renormalizes.
    rng = np.random.default_rng(2)
    q = torch.as_tensor(_distributions(rng, (5, 10)))
    p = torch.as_tensor(_distributions(rng, (5, 10)))
    cat = torch.distributions.OneHotCategorical
    expected = torch.distributions.kl_divergence(cat(probs=q + 1e-6), cat(probs=p + 1e-6))
    torch.testing.assert_close(losses.smoothed_kl(q, p, 1e-6), expected)


def test_ev_softmax_terms_follow_the_papers_equations():
    eps = 1e-6
    lq = torch.tensor([[2.0, 1.0, -1.0, -3.0]], dtype=torch.float64)
    lp = torch.tensor([[0.0, 1.0, 0.5, -2.0]], dtype=torch.float64)

    def reference(v):  # Eq. 10 in float64 NumPy
        v = v.numpy()[0]
        w = ((v >= v.mean()) + eps) * np.exp(v)
        return w / w.sum()

    q, p = reference(lq), reference(lp)
    weights, kl = losses.objective_terms(
        "ev_softmax", epsilon=eps, sparse_loss="smoothed-kl", delta=0
    )(lq, lp)
    np.testing.assert_allclose(kl.numpy(), [np.sum(q * np.log(q / p))], rtol=1e-9)
    # The reconstruction marginalizes over the support of ev-softmax itself (eps = 0).
    assert weights.numpy()[0].tolist() == pytest.approx([np.e / (np.e + 1), 1 / (np.e + 1), 0, 0])
    assert (weights[0, 2:] == 0).all()


def test_bernoulli_nll_matches_torch():
    x = torch.rand(2, 3, 5)
    logits = torch.randn(2, 4, 5)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        logits.unsqueeze(1).expand(2, 3, 4, 5), x.unsqueeze(2).expand(2, 3, 4, 5), reduction="none"
    ).sum(-1)
    torch.testing.assert_close(training.bernoulli_nll(x, logits), expected)


def test_relaxed_one_hot_is_gumbel_softmax_of_clamped_probabilities():
    probs = torch.tensor([[0.7, 0.3, 0.0], [1.0, 0.0, 0.0]])
    noise = torch.tensor([[0.1, -0.4, 2.0], [0.0, 1.0, -1.0]])
    eps = np.finfo(np.float32).eps
    logits = np.log(np.clip(probs.double().numpy(), eps, 1 - eps)) + noise.double().numpy()
    expected = np.exp(logits / 0.67 - (logits / 0.67).max(-1, keepdims=True))
    expected /= expected.sum(-1, keepdims=True)
    got = training.relaxed_one_hot(probs, 0.67, noise)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-7)


def test_gumbel_noise_is_per_seed_and_finite():
    def draw(seeds):
        return training.gumbel_noise((5000,), [torch.Generator().manual_seed(s) for s in seeds])

    both = draw([3, 4])
    torch.testing.assert_close(both[1], draw([4])[0])
    assert torch.isfinite(both).all()
    # Standard Gumbel: mean is the Euler-Mascheroni constant, variance pi^2 / 6.
    assert float(both.mean()) == pytest.approx(0.5772, abs=0.05)
    assert float(both.var()) == pytest.approx(math.pi**2 / 6, rel=0.1)


def _tiny(variant: str = "relaxed", **changes) -> CVAEOptions:
    base = quick(EXACT if variant == "exact" else QUICK)
    return base.replace(steps=40, eval_every=20, classifier_steps=30, **changes)


def test_default_is_the_papers_recipe():
    default = CVAEOptions()
    assert (default.variant, default.optimizer, default.learning_rate) == ("relaxed", "sgd", 1e-3)
    assert (default.hidden, default.prior_hidden, default.decoder_hidden) == (256, 30, 256)
    assert (default.batch_size, default.temperature, default.beta) == (64, 0.67, 0.01)
    assert default.epsilon == 1e-6


@pytest.mark.parametrize("variant", ["relaxed", "exact"])
def test_stacked_seeds_train_as_if_alone(variant):
    data = load(0.2)
    options = _tiny(variant, normalizers=("ev_softmax",))
    classifier = training.train_classifier(data, options)
    together = training.train_cvae("ev_softmax", data, classifier, options.replace(seeds=2))
    alone = training.train_cvae(
        "ev_softmax", data, classifier, options.replace(seeds=1, first_seed=1)
    )
    np.testing.assert_allclose(together.final.prior[1], alone.final.prior[0], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(together.curve[:, 1], alone.curve[:, 0], rtol=1e-4, atol=1e-6)


def test_run_restores_torch_threads():
    before = torch.get_num_threads()
    results = run_cvae(_tiny("exact", seeds=1, normalizers=("softmax",), threads=1))
    assert torch.get_num_threads() == before
    assert results.runs[0].decoder_calls.tolist() == [10.0]  # softmax: full support


def test_relaxed_variant_decodes_one_sample_per_example():
    results = run_cvae(_tiny(seeds=1, normalizers=("sparsemax",)))
    run = results.runs[0]
    assert run.decoder_calls.tolist() == [1.0]
    assert 1.0 <= float(run.posterior_support[0]) <= 10.0


def test_cvae_is_deterministic_per_seed():
    options = _tiny(seeds=1, normalizers=("ev_softmax",))
    first, second = run_cvae(options).runs[0], run_cvae(options).runs[0]
    np.testing.assert_array_equal(first.final.prior, second.final.prior)
    np.testing.assert_array_equal(first.curve, second.curve)


def test_command_line_quick_path(tmp_path, capsys):
    json_path, plots = tmp_path / "out" / "cvae.json", tmp_path / "plots"
    argv = ["reproduce", "cvae", "--quick", "--steps", "40", "--no-progress"]
    status = cli.main([*argv, "--json", str(json_path), "--plots", str(plots)])
    assert status == 0
    out = capsys.readouterr().out
    assert "Wasserstein" in out
    assert "ordering by the paper's Wasserstein distance" in out

    summary = json.loads(json_path.read_text())
    assert summary["options"]["seeds"] == QUICK.seeds
    assert summary["options"]["variant"] == "relaxed"
    assert summary["options"]["optimizer"] == "sgd"
    assert list(summary["normalizers"]) == list(NAMES)
    assert set(summary["ordering"]) == set(NAMES)
    assert 0.5 < summary["classifier_test_accuracy"] <= 1.0
    for entry in summary["normalizers"].values():
        assert 0.0 <= entry["wasserstein"]["mean"] <= 1.0
        assert math.isfinite(entry["wasserstein"]["sem"])
        assert 0.0 <= entry["total_variation"]["mean"] <= 1.0
        assert 0.0 <= entry["parity_mass"]["mean"] <= 1.0
        assert 0.0 <= entry["wasserstein_digits"]["mean"] <= 9.0
        assert len(entry["wasserstein"]["per_seed"]) == QUICK.seeds
        for query in ("even", "odd"):
            assert all(1 <= m <= 10 for m in entry["prior_modes"][query]["per_seed"])
            assert math.isfinite(entry["wasserstein_by_query"][query]["mean"])
        assert entry["decoder_calls_per_example"]["mean"] == 1.0  # one relaxed sample
        assert 1.0 <= entry["posterior_support"]["mean"] <= 10.0
        assert entry["curve"]["steps"] == [0, 40]
        assert all(math.isfinite(v) for v in entry["curve"]["mean"])
        prior = np.array(entry["first_seed"]["prior"])
        np.testing.assert_allclose(prior.sum(-1), 1.0, rtol=1e-5)
    assert summary["normalizers"]["softmax"]["posterior_support"]["mean"] == 10.0
    for name in ("cvae_priors.png", "cvae_wasserstein.png"):
        assert (plots / name).read_bytes()[:8] == PNG_MAGIC


def test_command_line_exact_variant(tmp_path):
    json_path = tmp_path / "exact.json"
    argv = ["reproduce", "cvae", "--variant", "exact", "--quick", "--steps", "30"]
    assert cli.main([*argv, "--no-progress", "--json", str(json_path)]) == 0
    summary = json.loads(json_path.read_text())
    assert summary["options"]["variant"] == "exact"
    assert summary["options"]["optimizer"] == "adam"
    assert summary["normalizers"]["softmax"]["decoder_calls_per_example"]["mean"] == 10.0


@pytest.mark.slow
def test_command_line_all_writes_one_document(tmp_path, capsys):
    json_path, plots = tmp_path / "all.json", tmp_path / "plots"
    argv = ["reproduce", "all", "--quick", "--steps", "12", "--seeds", "1", "--no-progress"]
    assert cli.main([*argv, "--json", str(json_path), "--plots", str(plots)]) == 0
    assert "ordering by attended keys" in capsys.readouterr().out
    document = json.loads(json_path.read_text())
    assert set(document["experiments"]) == {"cvae", "ssvae", "vqvae", "seq2seq"}
    for summary in document["experiments"].values():
        assert summary["options"]["steps"] == 12
        assert summary["options"]["seeds"] == 1
    pngs = (
        "cvae_priors.png",
        "cvae_wasserstein.png",
        "ssvae_accuracy.png",
        "vqvae_samples.png",
        "seq2seq.png",
    )
    for name in pngs:
        assert (plots / name).read_bytes()[:8] == PNG_MAGIC


# -- ssvae -----------------------------------------------------------------------------


def test_kl_to_uniform_matches_float64_and_has_finite_gradients():
    q = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]], requires_grad=True)
    expected = [np.log(4) + 2 * 0.5 * np.log(0.5), 0.0]
    kl = ssvae.kl_to_uniform(q)
    np.testing.assert_allclose(kl.detach().numpy(), expected, atol=1e-6)
    kl.sum().backward()
    assert torch.isfinite(q.grad).all()
    np.testing.assert_allclose(q.grad[0, :2].numpy(), np.log(0.5) + 1.0, rtol=1e-6)


def test_labeled_subset_takes_the_fraction_of_each_digit():
    digits = load(0.2).digit_train
    mask = ssvae.labeled_subset(digits, 0.1, seed=0)
    for d in range(10):
        members = int((digits == d).sum())
        assert int(mask[digits == d].sum()) == round(0.1 * members)
    assert not torch.equal(mask, ssvae.labeled_subset(digits, 0.1, seed=1))


def test_ssvae_marginal_is_the_dense_sum_over_classes():
    # The unlabeled term through sparse_expectation equals the dense float64 sum
    # sum_y q(y) L(x, y) when L is evaluated on every class with the same noise.
    import evsoftmax as evs

    options = ssvae.DEFAULT.replace(latent_dims=3, hidden=16)
    model = ssvae._Model.create(options, seed=0)
    x = load(0.2).x_train[:6]
    q = normalizers.lookup("sparsemax")(ssvae._one(model.classifier, x) * 20.0)
    assert 0 < int((q == 0).sum()) < q.numel()

    def elbo(rows, classes):  # L(x, y) at z = mu: no sampling noise
        return model.elbo_loss(x[rows], classes, None)

    got = evs.sparse_expectation(q, elbo)
    rows = torch.arange(6).repeat_interleave(10)
    dense = elbo(rows, torch.arange(10).repeat(6)).reshape(6, 10)
    expected = (q.double() * dense.double()).sum(-1)
    np.testing.assert_allclose(got.detach().numpy(), expected.detach().numpy(), rtol=1e-5)


def test_ssvae_runs_and_is_deterministic():
    options = ssvae.QUICK.replace(seeds=1, steps=20, eval_every=10)
    first = ssvae.summarize(ssvae.run_ssvae(options))
    second = ssvae.summarize(ssvae.run_ssvae(options))
    for name in NAMES:
        a, b = first["normalizers"][name], second["normalizers"][name]
        assert a["test_accuracy"] == b["test_accuracy"]
        assert a["decoder_calls_per_example"] == b["decoder_calls_per_example"]
    entries = first["normalizers"]
    assert entries["softmax"]["decoder_calls_per_example"]["mean"] == 10.0
    for entry in entries.values():
        assert 1.0 <= entry["decoder_calls_per_example"]["mean"] <= 10.0
        assert 0.0 <= entry["test_accuracy"]["mean"] <= 100.0
        assert entry["curve"]["steps"] == [0, 10, 20]
    assert first["options"]["alpha_used"] == pytest.approx(0.1 * len(load(0.2).x_train))


def test_command_line_ssvae_quick_path(tmp_path, capsys):
    json_path = tmp_path / "ssvae.json"
    argv = ["reproduce", "ssvae", "--quick", "--steps", "15", "--normalizers", "softmax"]
    assert cli.main([*argv, "ev_softmax", "--json", str(json_path)]) == 0
    assert "ordering by test accuracy" in capsys.readouterr().out
    summary = json.loads(json_path.read_text())
    assert list(summary["normalizers"]) == ["softmax", "ev_softmax"]
    assert summary["options"]["steps"] == 15
    assert summary["normalizers"]["ev_softmax"]["paper"] == {
        "accuracy": 97.30,
        "decoder_calls": 1.64,
    }


def test_command_line_rejects_bad_options(capsys):
    assert cli.main(["reproduce", "cvae", "--quick", "--seeds", "0", "--no-progress"]) == 2
    assert "seeds must be >= 1" in capsys.readouterr().err


def test_command_line_names_missing_dependencies(monkeypatch, capsys):
    from evsoftmax import _cli_reproduce

    monkeypatch.setitem(_cli_reproduce._REQUIRED, "evsoftmax_no_such_module", "no-such-package")
    assert cli.main(["reproduce", "cvae"]) == 1
    err = capsys.readouterr().err
    assert "no-such-package" in err
    assert 'pip install ".[reproduce]" (from a clone of the repository)' in err


# -- vqvae -----------------------------------------------------------------------------


def test_vqvae_sampling_counts_non_zero_codes():
    options = vqvae.QUICK.replace(codes=12, prior_hidden=8)
    prior = vqvae._Prior(options.codes, options.prior_hidden)
    digits = torch.arange(10)
    gen = torch.Generator().manual_seed(0)
    grids, nonzero = vqvae.sample(prior, "softmax", digits, gen)
    assert grids.shape == (10, vqvae.POSITIONS)
    assert ((grids >= 0) & (grids < 12)).all()
    assert nonzero == 12.0  # softmax: every code, every step
    again, _ = vqvae.sample(prior, "softmax", digits, torch.Generator().manual_seed(0))
    torch.testing.assert_close(grids, again)
    _, sparse = vqvae.sample(prior, "sparsemax", digits, gen)
    assert 1.0 <= sparse <= 12.0


def test_vqvae_quantizes_to_the_nearest_code():
    model = vqvae._VQVAE(codes=5, dims=3)
    vectors = torch.randn(2, 16, 3)
    got = model.quantize(vectors)
    distances = ((vectors.unsqueeze(-2) - model.codebook.detach()) ** 2).sum(-1)
    torch.testing.assert_close(got, distances.argmin(-1))


def test_command_line_vqvae_quick_path(tmp_path):
    json_path, plots = tmp_path / "vqvae.json", tmp_path / "plots"
    argv = ["reproduce", "vqvae", "--quick", "--steps", "10", "--seeds", "1", "--no-progress"]
    assert cli.main([*argv, "--json", str(json_path), "--plots", str(plots)]) == 0
    summary = json.loads(json_path.read_text())
    assert summary["options"]["steps"] == 10
    assert list(summary["normalizers"]) == list(NAMES)
    codes = summary["options"]["codes"]
    assert summary["normalizers"]["softmax"]["nonzero_codes"]["mean"] == codes
    for entry in summary["normalizers"].values():
        assert 0.0 <= entry["acc1"]["mean"] <= entry["acc3"]["mean"] <= 100.0
        assert 1.0 <= entry["nonzero_codes"]["mean"] <= codes
    assert (plots / "vqvae_samples.png").read_bytes()[:8] == PNG_MAGIC


# -- seq2seq ---------------------------------------------------------------------------


def test_generated_tasks_copy_reverse_and_sort():
    batch = tasks.generate(60, 10, 2, 6, torch.Generator().manual_seed(0))
    assert set(batch.task.tolist()) == {0, 1, 2}
    for source, target, task in zip(
        batch.source.tolist(), batch.target.tolist(), batch.task, strict=True
    ):
        x = [t for t in source[1:] if t != tasks.PAD]
        expected = {"copy": x, "reverse": x[::-1], "sort": sorted(x)}[tasks.TASKS[task]]
        assert 2 <= len(x) <= 6
        assert source[0] == 3 + int(task)  # the task token
        assert target == expected + [tasks.EOS] + [tasks.PAD] * (6 - len(x))
    assert batch.decoder_input()[:, 0].eq(tasks.BOS).all()
    torch.testing.assert_close(batch.decoder_input()[:, 1:], batch.target[:, :-1])
    again = tasks.generate(60, 10, 2, 6, torch.Generator().manual_seed(0))
    torch.testing.assert_close(batch.source, again.source)


def test_truncate_and_exact_match():
    eos, pad = tasks.EOS, tasks.PAD
    tokens = torch.tensor([[7, eos, 8, eos], [7, 8, 9, 9], [eos, 5, 5, 5]])
    expected = torch.tensor([[7, eos, pad, pad], [7, 8, 9, 9], [eos, pad, pad, pad]])
    torch.testing.assert_close(seq2seq.truncate(tokens), expected)
    target = torch.tensor([[7, eos, pad, pad], [7, 8, 9, eos], [eos, pad, pad, pad]])
    assert seq2seq.exact_match(seq2seq.truncate(tokens), target).tolist() == [True, False, True]


def _reference_attention(name, q, k, v, valid):
    """Float64 attention from the math: masked scores, then the normalizer's closed form."""
    scores = (q @ k.transpose(-2, -1)).double() / math.sqrt(q.shape[-1])
    if name == "ev_softmax":  # keep the valid keys at or above the valid keys' mean score
        mean = scores.where(valid, 0.0).sum(-1, keepdim=True) / valid.sum(-1, keepdim=True)
        valid = valid & (scores >= mean)
        weights = torch.softmax(scores.masked_fill(~valid, -math.inf), -1)
    else:
        entmax = pytest.importorskip("entmax")
        peer = {"softmax": torch.softmax, "sparsemax": entmax.sparsemax}.get(name, entmax.entmax15)
        weights = peer(scores.masked_fill(~valid, -math.inf), -1)
    return weights @ v.double(), (weights > 0).sum(-1)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("causal", [False, True])
def test_transformer_attention_matches_a_float64_reference(name, causal):
    torch.manual_seed(4)
    attention = transformer._Attention(name, 8, 2, epsilon=1e-6).eval()
    x = torch.randn(3, 5, 8) * 3
    keys = torch.ones(3, 5, dtype=torch.bool)
    keys[0, 3:] = False
    keys[2, 1:] = False
    with torch.no_grad():
        out, support = attention(x, x, keys, causal)
        q = attention._split(attention.query(x))
        k, v = (attention._split(t) for t in attention.key_value(x).chunk(2, dim=-1))
        valid = keys[:, None, None, :].expand(3, 2, 5, 5)
        if causal:
            valid = valid & torch.ones(5, 5, dtype=torch.bool).tril()
        expected, expected_support = _reference_attention(name, q, k, v, valid)
        expected = attention.out(expected.float().transpose(1, 2).reshape(3, 5, 8))
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(support, expected_support)


def test_seq2seq_is_deterministic_per_seed():
    options = seq2seq.QUICK.replace(seeds=1, steps=8, test_examples=30, normalizers=NAMES[2:])
    first, second = (seq2seq.summarize(seq2seq.run_seq2seq(options)) for _ in range(2))
    for name in NAMES[2:]:
        a, b = first["normalizers"][name], second["normalizers"][name]
        assert a["token_accuracy"] == b["token_accuracy"]
        assert a["attended_keys_by_kind"] == b["attended_keys_by_kind"]


def test_command_line_seq2seq_quick_path(tmp_path, capsys):
    json_path, plots = tmp_path / "seq2seq.json", tmp_path / "plots"
    argv = ["reproduce", "seq2seq", "--quick", "--steps", "10", "--seeds", "2", "--no-progress"]
    assert cli.main([*argv, "--json", str(json_path), "--plots", str(plots)]) == 0
    assert "ordering by exact match" in capsys.readouterr().out
    summary = json.loads(json_path.read_text())
    assert summary["options"]["steps"] == 10
    assert summary["options"]["seeds"] == 2
    assert list(summary["normalizers"]) == list(NAMES)
    assert summary["normalizers"]["ev_softmax"]["paper"] == {"bleu": 29.4, "attended": 8.2}
    valid = summary["valid_keys_by_kind"]
    softmax = summary["normalizers"]["softmax"]
    vocabulary = tasks.vocabulary_size(summary["options"]["symbols"])
    # softmax gives every valid key and every output token non-zero weight.
    for kind in transformer.KINDS:
        assert softmax["attended_keys_by_kind"][kind]["mean"] == pytest.approx(valid[kind])
    assert softmax["output_support"]["mean"] == vocabulary
    for entry in summary["normalizers"].values():
        for kind in transformer.KINDS:
            assert 1.0 <= entry["attended_keys_by_kind"][kind]["mean"] <= valid[kind] + 1e-9
        assert 1.0 <= entry["output_support"]["mean"] <= vocabulary
        for task in tasks.TASKS:
            assert 0.0 <= entry["exact_match_by_task"][task]["mean"] <= 100.0
        assert len(entry["token_accuracy"]["per_seed"]) == 2
    assert set(summary["ordering_by_attended_keys"]) == set(NAMES)
    assert (plots / "seq2seq.png").read_bytes()[:8] == PNG_MAGIC

"""``evsoftmax reproduce cvae``: the CVAE experiment's pieces and its command-line path.

No test asserts which normalizer wins: the experiment reports that, the tests
check that it runs, writes what it promises and computes its metric right.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")
pytest.importorskip("rich")

from evsoftmax import cli  # noqa: E402
from evsoftmax._reproduce import losses, metric, normalizers, training  # noqa: E402
from evsoftmax._reproduce.data import load  # noqa: E402
from evsoftmax._reproduce.experiment import run_cvae  # noqa: E402
from evsoftmax._reproduce.options import QUICK, CVAEOptions  # noqa: E402

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


def _tiny(**changes) -> CVAEOptions:
    base = QUICK.replace(steps=40, eval_every=20, classifier_steps=30)
    return base.replace(**changes)


def test_stacked_seeds_train_as_if_alone():
    data = load(0.2)
    options = _tiny(normalizers=("ev_softmax",))
    classifier = training.train_classifier(data, options)
    together = training.train_cvae("ev_softmax", data, classifier, options.replace(seeds=2))
    alone = training.train_cvae(
        "ev_softmax", data, classifier, options.replace(seeds=1, first_seed=1)
    )
    np.testing.assert_allclose(together.final.prior[1], alone.final.prior[0], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(together.curve[:, 1], alone.curve[:, 0], rtol=1e-4, atol=1e-6)


def test_run_restores_torch_threads():
    before = torch.get_num_threads()
    results = run_cvae(_tiny(seeds=1, normalizers=("softmax",), threads=1))
    assert torch.get_num_threads() == before
    assert results.runs[0].decoder_calls.tolist() == [10.0]  # softmax: full support


def test_command_line_quick_path(tmp_path, capsys):
    json_path, plots = tmp_path / "out" / "cvae.json", tmp_path / "plots"
    argv = ["reproduce", "cvae", "--quick", "--steps", "40"]
    status = cli.main([*argv, "--json", str(json_path), "--plots", str(plots)])
    assert status == 0
    out = capsys.readouterr().out
    assert "Wasserstein" in out
    assert "ordering by Wasserstein distance" in out

    summary = json.loads(json_path.read_text())
    assert summary["options"]["seeds"] == QUICK.seeds
    assert list(summary["normalizers"]) == list(NAMES)
    assert set(summary["ordering"]) == set(NAMES)
    assert 0.5 < summary["classifier_test_accuracy"] <= 1.0
    for entry in summary["normalizers"].values():
        assert 0.0 <= entry["wasserstein"]["mean"] <= 9.0
        assert math.isfinite(entry["wasserstein"]["sem"])
        assert len(entry["wasserstein"]["per_seed"]) == QUICK.seeds
        for query in ("even", "odd"):
            assert all(1 <= m <= 10 for m in entry["prior_modes"][query]["per_seed"])
            assert math.isfinite(entry["wasserstein_by_query"][query]["mean"])
        assert 1.0 <= entry["decoder_calls_per_example"]["mean"] <= 10.0
        assert entry["curve"]["steps"] == [0, 40]
        assert all(math.isfinite(v) for v in entry["curve"]["mean"])
        prior = np.array(entry["first_seed"]["prior"])
        np.testing.assert_allclose(prior.sum(-1), 1.0, rtol=1e-5)
    assert summary["normalizers"]["softmax"]["decoder_calls_per_example"]["mean"] == 10.0
    for name in ("cvae_priors.png", "cvae_wasserstein.png"):
        assert (plots / name).read_bytes()[:8] == PNG_MAGIC


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

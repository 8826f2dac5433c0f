r"""A small encoder-decoder Transformer on generated tasks (paper Table 4).

The paper trains Transformers on IWSLT'14 German-English whose attention (and
output layer) is softmax, sparsemax, entmax-1.5 or ev-softmax, and reports
BLEU and the number of attended tokens. Here, on CPU and without downloads:

* **Tasks** (:mod:`.tasks`): copy, reverse and sort sequences of 3 to 8
  integers from 10 symbols, one model for the three (a task token starts the
  source). Training batches are drawn fresh every step from a seeded
  generator; the test set is fixed per seed.
* **Model** (:mod:`.transformer`): 2 encoder and 2 decoder layers, width 64,
  4 heads; the normalizer under test in encoder self-, decoder self- and
  cross-attention, ev-softmax through ``ev_attention`` with ``epsilon = 1e-6``
  in training and 0 in evaluation.
* **Output layer**: the same normalizer, trained with its matching loss
  (softmax: cross-entropy; sparsemax, entmax-1.5: Fenchel-Young; ev-softmax:
  the NLL of its training family, ``epsilon = 1e-6``).
* **Metrics** on the test set: exact match of the greedy decoding per task,
  token accuracy, attended keys per query (teacher-forced, ``epsilon = 0``,
  mean over layers, heads and non-padding queries) per attention kind, and
  the output distribution's support size.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from rich import box
from rich.table import Table

from . import losses, metric, normalizers
from .figures import COLORS
from .normalizers import LABELS
from .options import NORMALIZERS
from .report import environment, pm
from .tasks import BOS, EOS, PAD, TASKS, Batch, generate, vocabulary_size
from .transformer import KINDS, Seq2SeqTransformer, Supports

__all__ = [
    "DEFAULT",
    "PAPER",
    "QUICK",
    "Seq2SeqOptions",
    "Seq2SeqResults",
    "exact_match",
    "greedy_decode",
    "run_seq2seq",
    "support_figure",
    "summarize",
    "table",
    "truncate",
]

_MODEL_OFFSET = 9_000_011
_TRAIN_OFFSET = 10_000_019
_TEST_OFFSET = 11_000_027

PAPER = {
    "softmax": {"bleu": 29.2, "attended": 39.5},
    "sparsemax": {"bleu": 29.0, "attended": 2.3},
    "entmax15": {"bleu": 29.2, "attended": 4.1},
    "ev_softmax": {"bleu": 29.4, "attended": 8.2},
}
"""The paper's Table 4 (IWSLT'14 EN-DE): BLEU and attended tokens per query."""


@dataclass(frozen=True)
class Seq2SeqOptions:
    """Everything that defines one run of the seq2seq experiment."""

    normalizers: tuple[str, ...] = NORMALIZERS
    seeds: int = 3
    first_seed: int = 0
    steps: int = 1000
    batch_size: int = 64
    learning_rate: float = 2e-3
    warmup: int = 100
    symbols: int = 10
    min_length: int = 3
    max_length: int = 8
    width: int = 64
    heads: int = 4
    layers: int = 2
    epsilon: float = 1e-6
    test_examples: int = 300
    threads: int = 1

    def replace(self, **changes: object) -> Seq2SeqOptions:
        """A copy with ``changes`` applied (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def __post_init__(self) -> None:
        unknown = sorted(set(self.normalizers) - set(NORMALIZERS))
        if unknown or not self.normalizers:
            raise ValueError(f"normalizers must be among {NORMALIZERS}, got {self.normalizers}")
        for name in ("seeds", "steps", "batch_size", "symbols", "test_examples", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 1 <= self.min_length <= self.max_length:
            raise ValueError(
                f"need 1 <= min_length <= max_length, got {self.min_length}, {self.max_length}"
            )


DEFAULT = Seq2SeqOptions()
"""The recorded run of ``docs/reproduction.md``."""

QUICK = DEFAULT.replace(seeds=2, steps=100, test_examples=150)
"""``--quick``: two seeds, 100 steps (seconds)."""


def _model(name: str, options: Seq2SeqOptions, seed: int) -> Seq2SeqTransformer:
    with torch.random.fork_rng():
        torch.manual_seed(seed + _MODEL_OFFSET)
        return Seq2SeqTransformer(
            name,
            vocabulary_size(options.symbols),
            options.max_length + 1,
            width=options.width,
            heads=options.heads,
            layers=options.layers,
            epsilon=options.epsilon,
        )


def _batches(options: Seq2SeqOptions, seed: int, count: int, offset: int) -> Batch:
    generator = torch.Generator().manual_seed(seed + offset)
    return generate(count, options.symbols, options.min_length, options.max_length, generator)


def train(
    name: str,
    options: Seq2SeqOptions,
    seed: int,
    advance: Callable[[int], None] = lambda steps: None,
) -> Seq2SeqTransformer:
    """One model trained with Adam (linear warm-up) on fresh batches of the three tasks."""
    model = _model(name, options, seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=options.learning_rate)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / max(1, options.warmup))
    )
    generator = torch.Generator().manual_seed(seed + _TRAIN_OFFSET)
    model.train()
    for _ in range(options.steps):
        batch = generate(
            options.batch_size, options.symbols, options.min_length, options.max_length, generator
        )
        logits = model(batch.source, batch.decoder_input())
        loss = losses.class_loss(name, logits, batch.target, options.epsilon, ignore_index=PAD)
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        advance(1)
    model.eval()
    return model


def greedy_decode(model: Seq2SeqTransformer, source: torch.Tensor, steps: int) -> torch.Tensor:
    """Greedy decoding ``(B, steps)``; every token after a row's first ``EOS`` is ``PAD``.

    The argmax of every normalizer here is the argmax of the logits, so the
    logits are not normalized.
    """
    with torch.no_grad():
        memory = model.encode(source)
        out = torch.full((len(source), 1), BOS, dtype=torch.long)
        for _ in range(steps):
            logits = model.decode(memory, source, out)
            out = torch.cat([out, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
            if (out == EOS).any(-1).all():
                break
    predicted = out[:, 1:]
    padding = torch.full((len(source), steps - predicted.shape[1]), PAD)
    return truncate(torch.cat([predicted, padding], dim=1))


def truncate(tokens: torch.Tensor) -> torch.Tensor:
    """``tokens`` ``(B, T)``, every token after a row's first ``EOS`` set to ``PAD``."""
    ends = (tokens == EOS).long()
    return tokens.masked_fill(ends.cumsum(-1) - ends > 0, PAD)


def exact_match(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Rows ``(B,)`` whose decoding equals the target, its ``EOS`` included."""
    return (predicted == target).all(-1)


def _attended(supports: Supports, source: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    encoder_queries = (source != PAD)[:, None, :]
    decoder_queries = (target != PAD)[:, None, :]
    means = {}
    for kind in KINDS:
        queries = encoder_queries if kind == "encoder_self" else decoder_queries
        per_layer = [float(s.double()[queries.expand_as(s)].mean()) for s in supports[kind]]
        means[kind] = float(np.mean(per_layer))
    return means


@dataclass(frozen=True)
class _Evaluation:
    exact: dict[str, float]  # per task, %
    token_accuracy: float  # %
    attended: dict[str, float]  # per kind
    output_support: float


def evaluate(name: str, model: Seq2SeqTransformer, test: Batch) -> _Evaluation:
    """The test-set metrics of one trained model (``epsilon = 0``)."""
    predicted = greedy_decode(model, test.source, test.target.shape[1])
    matches = exact_match(predicted, test.target)
    valid = test.target != PAD
    exact = {
        task: float(matches[test.task == t].double().mean()) * 100 for t, task in enumerate(TASKS)
    }
    token_accuracy = float((predicted == test.target)[valid].double().mean()) * 100
    supports: Supports = {kind: [] for kind in KINDS}
    with torch.no_grad():
        logits = model(test.source, test.decoder_input(), supports)
        probabilities = normalizers.lookup(name)(logits)
    output_support = float((probabilities > 0).sum(-1).double()[valid].mean())
    return _Evaluation(
        exact, token_accuracy, _attended(supports, test.source, test.target), output_support
    )


@dataclass(frozen=True)
class Seq2SeqResults:
    """What one run measured: per normalizer, one evaluation per seed."""

    options: Seq2SeqOptions
    evaluations: dict[str, list[_Evaluation]]
    valid_keys: dict[str, float]  # per kind: keys a query may attend to (mean over seeds)
    seconds: dict[str, float]  # per normalizer, training and evaluation over all seeds
    total_seconds: float
    cpu_seconds: float


def _valid_keys(test: Batch) -> dict[str, float]:
    lengths = (test.source != PAD).sum(-1).double()
    positions = torch.arange(1, test.target.shape[1] + 1).double()
    causal = positions.expand_as(test.target)[test.target != PAD]
    return {
        "encoder_self": float((lengths * lengths).sum() / lengths.sum()),
        "decoder_self": float(causal.mean()),
        "cross": float((lengths * (test.target != PAD).sum(-1)).sum() / (test.target != PAD).sum()),
    }


def run_seq2seq(
    options: Seq2SeqOptions,
    start: Callable[[str], None] = lambda name: None,
    advance: Callable[[int], None] = lambda steps: None,
) -> Seq2SeqResults:
    """Train and evaluate one model per normalizer and seed."""
    began, cpu = time.perf_counter(), time.process_time()
    threads = torch.get_num_threads()
    torch.set_num_threads(options.threads)
    try:
        seeds = range(options.first_seed, options.first_seed + options.seeds)
        tests = {
            seed: _batches(options, seed, options.test_examples, _TEST_OFFSET) for seed in seeds
        }
        evaluations: dict[str, list[_Evaluation]] = {}
        seconds: dict[str, float] = {}
        for name in options.normalizers:
            start(name)
            clock = time.perf_counter()
            evaluations[name] = [
                evaluate(name, train(name, options, seed, advance), tests[seed]) for seed in seeds
            ]
            seconds[name] = time.perf_counter() - clock
    finally:
        torch.set_num_threads(threads)
    return Seq2SeqResults(
        options,
        evaluations,
        {k: float(np.mean([_valid_keys(t)[k] for t in tests.values()])) for k in KINDS},
        seconds,
        time.perf_counter() - began,
        time.process_time() - cpu,
    )


def _stat(values: Any) -> dict[str, Any]:
    array = np.asarray(values, dtype=np.float64)
    mean, sem = metric.mean_and_sem(array)
    return {
        "mean": float(mean),
        "sem": None if not np.isfinite(sem) else float(sem),
        "per_seed": array.tolist(),
    }


def _summarize_normalizer(name: str, runs: list[_Evaluation], seconds: float) -> dict[str, Any]:
    per_seed_exact = [float(np.mean(list(run.exact.values()))) for run in runs]
    per_seed_attended = [float(np.mean(list(run.attended.values()))) for run in runs]
    return {
        "label": LABELS[name],
        "exact_match": _stat(per_seed_exact),
        "exact_match_by_task": {t: _stat([run.exact[t] for run in runs]) for t in TASKS},
        "token_accuracy": _stat([run.token_accuracy for run in runs]),
        "attended_keys": _stat(per_seed_attended),
        "attended_keys_by_kind": {k: _stat([run.attended[k] for run in runs]) for k in KINDS},
        "output_support": _stat([run.output_support for run in runs]),
        "paper": PAPER[name],
        "seconds": seconds,
    }


def summarize(results: Seq2SeqResults) -> dict[str, Any]:
    """The JSON-ready document of a run (accuracies in %)."""
    entries = {
        name: _summarize_normalizer(name, runs, results.seconds[name])
        for name, runs in results.evaluations.items()
    }
    summary: dict[str, Any] = {
        "experiment": "seq2seq-copy-reverse-sort",
        "options": dataclasses.asdict(results.options),
        "environment": environment(),
        "tasks": list(TASKS),
        "valid_keys_by_kind": results.valid_keys,
        "seconds": results.total_seconds,
        "cpu_seconds": results.cpu_seconds,
        "normalizers": entries,
    }
    summary["ordering"] = sorted(entries, key=lambda n: -entries[n]["exact_match"]["mean"])
    summary["ordering_by_attended_keys"] = sorted(
        entries, key=lambda n: entries[n]["attended_keys"]["mean"]
    )
    summary["paper_claims"] = paper_claims(summary)
    return summary


def paper_claims(summary: dict[str, Any]) -> dict[str, bool]:
    """Table 4's attended-token findings, checked against the means of this run.

    BLEU on IWSLT and exact match on generated tasks are not comparable, so
    only the attention's sparsity is checked: the paper orders the attended
    tokens sparsemax < entmax-1.5 < ev-softmax < softmax.
    """
    entries = summary["normalizers"]
    if "ev_softmax" not in entries:
        return {}
    ev = entries["ev_softmax"]["attended_keys"]["mean"]
    claims = {}
    if "softmax" in entries:
        fewer = ev < entries["softmax"]["attended_keys"]["mean"]
        claims["ev-softmax attends to fewer keys than softmax"] = fewer
    for name in ("entmax15", "sparsemax"):
        if name in entries:
            more = ev > entries[name]["attended_keys"]["mean"]
            claims[f"ev-softmax attends to more keys than {LABELS[name]}"] = more
    return claims


def table(summary: dict[str, Any]) -> Table:
    """The terminal table, the paper's numbers beside."""
    options = summary["options"]
    out = Table(
        title=f"seq2seq Transformer on copy / reverse / sort: {options['seeds']} seed(s), "
        f"{options['steps']} steps",
        caption="exact: greedy decoding equals the target (%), per task and mean. keys: "
        "attended keys per query (non-zero weight), mean of encoder self / decoder self / "
        "cross. out: output support. paper: IWSLT'14 EN-DE BLEU / attended tokens.",
        box=box.SIMPLE_HEAD,
    )
    out.add_column("normalizer", no_wrap=True)
    headers = (*TASKS, "exact", "token acc", "keys", "enc / dec / cross", "out", "paper")
    for header in headers:
        out.add_column(header, justify="right", no_wrap=True)
    for entry in summary["normalizers"].values():
        kinds = entry["attended_keys_by_kind"]
        out.add_row(
            entry["label"],
            *(pm(entry["exact_match_by_task"][t], 1) for t in TASKS),
            pm(entry["exact_match"], 1),
            pm(entry["token_accuracy"], 1),
            pm(entry["attended_keys"], 2),
            " / ".join(f"{kinds[k]['mean']:.2f}" for k in KINDS),
            pm(entry["output_support"], 2),
            f"{entry['paper']['bleu']:.1f} / {entry['paper']['attended']:.1f}",
        )
    return out


def support_figure(summary: dict[str, Any], path: Path) -> None:
    """Exact match per task and attended keys per kind: bars of mean ± s.e. over seeds."""
    names = list(summary["normalizers"])
    figure = Figure(figsize=(11, 3.8), layout="constrained")
    left, right = figure.subplots(1, 2)
    width = 0.8 / len(names)
    panels = (
        (left, "exact_match_by_task", TASKS, "exact match (%)", None),
        (right, "attended_keys_by_kind", KINDS, "attended keys per query", summary),
    )
    for ax, key, groups, label, keys_of in panels:
        for i, name in enumerate(names):
            entry = summary["normalizers"][name][key]
            means = [entry[g]["mean"] for g in groups]
            errors = [entry[g]["sem"] or 0.0 for g in groups]
            x = np.arange(len(groups)) + (i - (len(names) - 1) / 2) * width
            ax.bar(x, means, width, yerr=errors, color=COLORS[name], label=LABELS[name])
        if keys_of is not None:
            valid = [keys_of["valid_keys_by_kind"][g] for g in groups]
            ax.scatter(
                np.arange(len(groups)),
                valid,
                marker="_",
                s=900,
                color="black",
                label="keys a query may attend to",
                zorder=3,
            )
        ax.set_xticks(np.arange(len(groups)), [g.replace("_", " ") for g in groups])
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, axis="y")
    handles, labels = right.get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncols=len(labels), frameon=False)
    figure.suptitle(
        f"seq2seq on generated tasks: mean ± standard error over {summary['options']['seeds']} "
        "seeds (test set, epsilon = 0)"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)

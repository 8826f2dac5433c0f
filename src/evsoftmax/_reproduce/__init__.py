"""``evsoftmax reproduce``: the paper's experiments at small scale, on CPU.

Private helpers behind the ``reproduce`` subcommand. Every module here may
import torch, scikit-learn, matplotlib or rich at module level: the
subcommand imports this package only inside ``run``, so ``import evsoftmax``
stays free of them.

Modules of the CVAE: ``options`` (experiment settings and presets), ``data``
(the digits), ``normalizers`` (the four normalizers, looked up in one place),
``models`` (seed-stacked MLPs), ``losses`` (the per-normalizer ELBO terms),
``metric`` (the paper's Wasserstein distance, total variation, parity mass,
mode counts, mean and standard error), ``training`` (the training loop),
``experiment`` (the whole run), ``figures`` (the PNGs) and ``report`` (table,
progress bar, JSON). ``ssvae`` and ``vqvae`` hold two more experiments
whole; ``seq2seq`` is the Transformer experiment, with its generated data in
``tasks`` and its model in ``transformer``; ``main`` is the subcommand's body.
"""

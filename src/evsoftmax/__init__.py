"""evsoftmax: evidential softmax and its sparse peers on every array library.

ev-softmax (Chen et al., NeurIPS 2021) is a softmax over the entries at or
above their row's mean: sparse, yet multimodal. Every function takes arrays of
any array-API library (NumPy, PyTorch, JAX, CuPy, Dask, array-api-strict, ...)
and returns arrays of the same library, device and floating dtype.

Examples
--------
>>> import numpy as np
>>> import evsoftmax as evs
>>> evs.ev_softmax(np.array([0.4, 1.4, -0.8])).round(2)
array([0.27, 0.73, 0.  ])
"""

from ._attention import ev_attention
from ._baselines import (
    entmax15,
    entmax_bisect,
    evidential_sparsification,
    log_softmax,
    softmax,
    sparsemax,
)
from ._evsoftmax import ev_softmax, ev_softmax_jvp, ev_softmax_support, log_ev_softmax
from ._expectation import sparse_expectation
from ._losses import entmax15_loss, ev_softmax_kl_div, ev_softmax_nll_loss, sparsemax_loss

__version__ = "0.1.0.dev0"

__all__ = [
    "__version__",
    "entmax15",
    "entmax15_loss",
    "entmax_bisect",
    "ev_attention",
    "ev_softmax",
    "ev_softmax_jvp",
    "ev_softmax_kl_div",
    "ev_softmax_nll_loss",
    "ev_softmax_support",
    "evidential_sparsification",
    "log_ev_softmax",
    "log_softmax",
    "softmax",
    "sparse_expectation",
    "sparsemax",
    "sparsemax_loss",
]

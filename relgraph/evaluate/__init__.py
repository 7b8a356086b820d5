"""``relgraph evaluate``: how faithful is a heatmap? Image degradation and AOPC (Samek et al. 2017).

A heatmap is faithful when the pixels it calls relevant are the ones the model needs: removing them first
should make the model's probability of the target fall fastest.

- :mod:`.images`: image degradation, patch by patch, most relevant first; AOPC against a random order; the
  share of positive relevance inside ground-truth masks (:func:`evaluate`).
- :mod:`.tokens`: token models (int64 ``input_ids``, explained per token) by token ablation, the protocol of the
  AttnLRP paper's Table 1 (Achtibat et al., ICML 2024): token embeddings set to zero most relevant first (MoRF)
  and least relevant first (LeRF), and the areas under the two curves compared (:func:`evaluate_tokens`).
- :mod:`.data`: images, labels, masks and token ids from .npy, .npz or a folder, checked.
- :mod:`.methods`: one explainer per method (compiled, patterns fitted on training data) and its relevance.
- :mod:`.command`: the ``relgraph evaluate`` command: its options, table, JSON report and plots.
"""

from .command import add_command, cmd_evaluate
from .data import Dataset, TokenData, is_token_data, load_dataset, load_token_data
from .images import (RANDOM, Evaluation, Scorer, aopc, default_patch, degraded, evaluate, mean_and_stderr,
                     most_relevant_first, patch_grid, patch_scores, perturbation_curves, positive_share,
                     random_orders)
from .methods import (DEFAULT_METHODS, TOKEN_METHODS, check_methods, compile_methods, forward_of, relevance_of,
                      token_relevance_of, training_data)
from .tokens import (KEEP, TokenEvaluation, TokenScorer, ablation_model, curves_on_grid, evaluate_tokens,
                     random_token_ranks, token_auc, token_curves, token_ranks)

__all__ = [
    "DEFAULT_METHODS", "KEEP", "RANDOM", "TOKEN_METHODS", "Dataset", "Evaluation", "Scorer", "TokenData",
    "TokenEvaluation", "TokenScorer", "ablation_model", "add_command", "aopc", "check_methods", "cmd_evaluate",
    "compile_methods", "curves_on_grid", "default_patch", "degraded", "evaluate", "evaluate_tokens", "forward_of",
    "is_token_data", "load_dataset", "load_token_data", "mean_and_stderr", "most_relevant_first", "patch_grid",
    "patch_scores", "perturbation_curves", "positive_share", "random_orders", "random_token_ranks", "relevance_of",
    "token_auc", "token_curves", "token_ranks", "token_relevance_of", "training_data",
]

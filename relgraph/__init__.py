"""relgraph: compile any ONNX classifier into a relevance (LRP) explainer.

    >>> import relgraph
    >>> result = relgraph.compile("model.onnx", rule="epsilon-plus-flat")
    >>> out = relgraph.Explainer(result.path).explain(x, target=3)
    >>> out["logits"], out["relevance"], out["bias_relevance"]
"""

__version__ = "0.1.0"

from .compiler import compile  # noqa: E402
from .errors import RelgraphError, UnsupportedOpsError  # noqa: E402
from .explainer import Explainer, open_explainer  # noqa: E402

__all__ = ["compile", "Explainer", "open_explainer", "RelgraphError", "UnsupportedOpsError", "__version__"]

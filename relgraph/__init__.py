"""relgraph: compile any ONNX classifier into a relevance (LRP) explainer.

    >>> import relgraph
    >>> result = relgraph.compile("model.onnx", rule="epsilon-plus-flat")
    >>> out = relgraph.Explainer(result.path).explain(x, target=3)
    >>> out["logits"], out["relevance"], out["bias_relevance"]
"""

from .compiler import compile
from .errors import RelgraphError, UnsupportedOpsError
from .explainer import Explainer, open_explainer
from .version import __version__

__all__ = ["compile", "Explainer", "open_explainer", "RelgraphError", "UnsupportedOpsError", "__version__"]

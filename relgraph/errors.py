"""The one exception type relgraph raises for problems a user can fix.

The CLI prints its message on one line and exits non-zero; anything else escaping is a bug in relgraph.
"""


TRITON_STACK = ("torch", "triton", "onnxscript")  # what the triton target, its kernels and their tools import


class RelgraphError(Exception):
    """A problem with what the user gave: the model, a rule, a rule map, an input."""


class UnsupportedOpsError(RelgraphError):
    """Nodes that no rule covers, all of them at once.

    ``problems`` is a list of ``(op_type, node_name, reason)``.
    """

    def __init__(self, problems, supported):
        self.problems = list(problems)
        self.supported = sorted(supported)
        listed = "; ".join(f"{op} '{name}'" + (f" ({why})" if why else "") for op, name, why in self.problems)
        super().__init__(
            f"{len(self.problems)} unsupported node(s): {listed}. Supported ops: {', '.join(self.supported)}"
        )


def require(modules, purpose: str, extra: str = "gpu") -> None:
    """A one-line error, not a traceback, where an optional dependency of ``purpose`` is not installed."""
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise RelgraphError(f"{purpose} needs {' and '.join(missing)}, which are not installed: "
                            f"pip install 'relgraph[{extra}]'")

"""Encoders of numeric groups: identity, per-feature linear, piecewise-linear and periodic.

The numeric group's tensor is ``n_values`` scaled values followed by is-missing
indicators (see :mod:`hydranet.features.numeric`). ``identity`` passes it as it is
(the layout of every earlier version). The others embed each scaled value into
``d_embedding`` numbers and pass the indicators on unchanged; they are the numeric
embeddings of Gorishniy, Rubachev and Babenko, "On Embeddings for Numerical
Features in Tabular Deep Learning" (NeurIPS 2022), taken from the authors'
``rtdl_num_embeddings`` package rather than rewritten:

* ``linear``: ``x_j · w_j + b_j`` per feature (``LinearEmbeddings``);
* ``piecewise_linear``: the piecewise-linear encoding of ``x_j`` over bins learned from
  the training split, quantile bins or target-aware decision-tree bins (``compute_bins``;
  trees need scikit-learn), then a linear layer per feature (``PiecewiseLinearEmbeddings``,
  version "B" as the library's README recommends, no activation);
* ``periodic``: ``concat(sin(2π c x), cos(2π c x))`` with trained frequencies ``c`` then a
  linear layer and ReLU per feature (``PeriodicEmbeddings``, lite=False: PLR).
"""

from __future__ import annotations

import warnings
from typing import Annotated, Any, Literal

import torch
from pydantic import Field

from hydranet.errors import UserError
from hydranet.models.encoders.base import ENCODERS, Encoder
from hydranet.params import PositiveFloat, PositiveInt

_MAX_BIN_ROWS = 1_000_000  # quantiles from at most this many training rows (sampled)


def _import_rtdl():
    try:
        import rtdl_num_embeddings
    except ImportError:  # pragma: no cover - a dependency
        raise UserError(
            "the numeric embeddings need rtdl_num_embeddings: pip install rtdl_num_embeddings"
        ) from None
    return rtdl_num_embeddings


class _PerValue(Encoder):
    """Embeds the ``n_values`` scaled values, passes the indicator columns on."""

    kinds = ("numeric",)

    def __init__(self, group: dict[str, Any], model_spec: Any = None, state: Any = None):
        super().__init__(group, model_spec, state)
        self.n_values = int(group.get("n_values", group["width"]))
        self.n_flags = int(group["width"]) - self.n_values

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = self.embed(x[:, : self.n_values]).flatten(1)  # [B, n_values * d]
        return torch.cat([flat, x[:, self.n_values :]], dim=1) if self.n_flags else flat

    @classmethod
    def example_group(cls) -> tuple[dict[str, Any], torch.Tensor]:
        x = torch.randn(64, 4)
        x[:, 3] = (torch.arange(64) % 2).float()  # an is-missing indicator
        return {"kind": "numeric", "width": 4, "n_values": 3}, x


@ENCODERS.register("identity")
class Identity(Encoder):
    """The group's tensor as it is."""

    kinds = ("numeric",)

    def __init__(self, group: dict[str, Any], model_spec: Any = None, state: Any = None):
        super().__init__(group, model_spec, state)
        self.out_dim = int(group["width"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    example_group = _PerValue.example_group


@ENCODERS.register("linear")
class Linear(_PerValue):
    param_constraints = {"d_embedding": PositiveInt}

    def __init__(
        self,
        group: dict[str, Any],
        model_spec: Any = None,
        state: Any = None,
        d_embedding: int = 8,
    ):
        super().__init__(group, model_spec, state)
        self.embed = _import_rtdl().LinearEmbeddings(self.n_values, d_embedding)
        self.out_dim = self.n_values * d_embedding + self.n_flags


@ENCODERS.register("piecewise_linear")
class PiecewiseLinear(_PerValue):
    needs_fit = True
    param_constraints = {
        "n_bins": Annotated[int, Field(ge=2)],
        "d_embedding": PositiveInt,
        "bins": Literal["quantile", "tree"],
        "tree_kwargs": dict[str, Any] | None,
    }

    def __init__(
        self,
        group: dict[str, Any],
        model_spec: Any = None,
        state: Any = None,
        n_bins: int = 48,
        d_embedding: int = 8,
        bins: Literal["quantile", "tree"] = "quantile",
        tree_kwargs: dict[str, Any] | None = None,
    ):
        super().__init__(group, model_spec, state)
        if state is None:
            raise UserError(
                "the piecewise_linear encoder learns its bins from the training data; it is built by training, or from a run's encoders.json"
            )
        edges = [torch.tensor(b, dtype=torch.float32) for b in state["bins"]]
        self.embed = _import_rtdl().PiecewiseLinearEmbeddings(
            edges, d_embedding, activation=False, version="B"
        )
        self.out_dim = self.n_values * d_embedding + self.n_flags

    @classmethod
    def fit_state(cls, group, x, params, target):
        rtdl = _import_rtdl()
        n_values = int(group.get("n_values", group["width"]))
        x = x[:, :n_values].float()
        if x.shape[0] > _MAX_BIN_ROWS:
            gen = torch.Generator().manual_seed(0)
            keep = torch.randperm(x.shape[0], generator=gen)[:_MAX_BIN_ROWS]
            x = x[keep]
            if target is not None:  # the labels of the same rows, for tree bins
                target = (target[0][keep], target[1])
        n_bins = int(params["n_bins"])
        if n_bins < 2:
            raise UserError(f"piecewise_linear: n_bins must be at least 2; got {n_bins}")
        n_bins = min(n_bins, x.shape[0] - 1)
        # compute_bins refuses a constant column; such a column gets one bin around its value
        varies = (x != x[0]).any(dim=0)
        cols = torch.nonzero(varies).flatten().tolist()
        bins: list[list[float]] = [
            [float(x[0, j]) - 1.0, float(x[0, j]) + 1.0] for j in range(n_values)
        ]
        if cols:
            kwargs: dict[str, Any] = {}
            if params["bins"] == "tree":
                if target is None:
                    raise UserError("piecewise_linear with bins = 'tree' needs a task's labels")
                y, regression = target
                kwargs = {
                    "tree_kwargs": params["tree_kwargs"]
                    or {"min_samples_leaf": 64, "min_impurity_decrease": 1e-4},
                    "y": y,
                    "regression": regression,
                }
            try:
                with warnings.catch_warnings():
                    # a column whose quantiles collapse (capital gains: 0 in most rows) gets
                    # one bin, i.e. a min-max scaled value; rtdl says so in a multi-line
                    # warning naming its position, not the column, on every training: nothing
                    # for the user to do, so it is not passed on
                    warnings.filterwarnings("ignore", message=r".*has just two bin edges")
                    found = rtdl.compute_bins(x[:, cols], n_bins, **kwargs)
            except (RuntimeError, ValueError) as e:  # scikit-learn missing, bad tree_kwargs
                raise UserError(f"piecewise_linear: {e}") from None
            for j, b in zip(cols, found, strict=True):
                bins[j] = b.tolist()
        return {"bins": bins}


@ENCODERS.register("periodic")
class Periodic(_PerValue):
    param_constraints = {
        "d_embedding": PositiveInt,
        "n_frequencies": PositiveInt,
        "frequency_init_scale": PositiveFloat,
        "lite": bool,
    }

    def __init__(
        self,
        group: dict[str, Any],
        model_spec: Any = None,
        state: Any = None,
        d_embedding: int = 24,
        n_frequencies: int = 48,
        frequency_init_scale: float = 0.01,
        lite: bool = False,
    ):
        super().__init__(group, model_spec, state)
        self.embed = _import_rtdl().PeriodicEmbeddings(
            self.n_values,
            d_embedding,
            n_frequencies=n_frequencies,
            frequency_init_scale=frequency_init_scale,
            lite=lite,
        )
        self.out_dim = self.n_values * d_embedding + self.n_flags

"""Hyper-parameter search with Optuna: ``hydranet tune SPEC --trials N --out DIR``.

The spec's ``[tune.space]`` names spec keys and their ranges or choices
(:mod:`hydranet.tune.space`); each trial trains into ``DIR/trials/<number>`` and is pruned
on its per-epoch validation metric (:mod:`hydranet.tune.objective`); the study is shared
and resumable through its storage (:mod:`hydranet.tune.study`); ``DIR/best`` is the best
trial's run, beside ``trials.csv`` and the plots (:mod:`hydranet.tune.report`).
Needs the tune extra: ``pip install 'hydranet[tune]'``.
"""

from hydranet.tune.study import TuneResult, tune

__all__ = ["TuneResult", "tune"]

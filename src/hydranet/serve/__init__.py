"""Serving a run: HTTP (``app``, ``server``, ``batcher``, ``validate``, ``encode``, ``metrics``),
ONNX export (``export``), int8 compression (``compress``) and batch prediction files (``batch``).

Everything starts from a run directory; :class:`~hydranet.serve.predictor.Predictor` holds
the run's preprocessor, tasks and a forward pass (PyTorch or ONNX Runtime).
"""

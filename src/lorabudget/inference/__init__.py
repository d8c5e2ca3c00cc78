"""Inference: batched forward passes (torch and ONNX Runtime), and finished runs loaded to evaluate, predict and
classify. Depends on ``model``, ``data`` and ``rundir``."""

"""Backends for the model's dense parts (engine/model_parts.py): eager PyTorch, the reference,
and compiled ones — torch.compile, ONNX Runtime, OpenVINO, IREE — each optional, imported only
when used, admitted only through the equivalence gate, and chosen per phase and bucket by
measured cost."""

"""ARuntime: a distributed, memory-aware, stateful, policy-aware AI runtime."""

__version__ = "0.1.0"
__all__ = ["__version__"]

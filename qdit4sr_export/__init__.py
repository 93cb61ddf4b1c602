"""qdit4sr-export: post-training quantization and deployment of DiT4SR super-resolution transformers."""

__version__ = "0.1.0"

__all__ = ["__version__"]

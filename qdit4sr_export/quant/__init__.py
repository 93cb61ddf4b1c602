"""Quantization numerics: Hadamard rotations, the Gaussian quantizer, H-SVD, VaSMP, VaTMP, plans and simulation."""

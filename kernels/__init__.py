"""Triton kernels for the PRCO loss head (imports only torch and triton)."""

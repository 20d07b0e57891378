"""Likelihood as a product: scoring (NLL, bits/dim, OOD) and lossless compression with a prior driving a range coder."""

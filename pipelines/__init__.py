"""vqgen pipelines: data, training loops, tokenize, generate, score, compress and the `vqgen` CLI."""

"""Training: the one Accelerate loop (``loop``), what tokenizers and priors plug into it (``tasks``), and resumable checkpoints (``checkpoints``)."""

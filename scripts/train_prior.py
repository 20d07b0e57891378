"""Entry point for `accelerate launch scripts/train_prior.py --tokens ... --arch ... --out ...` (same flags
as `vqgen train-prior`)."""

import sys

from pipelines.cli import main

if __name__ == "__main__":
    sys.exit(main(["train-prior", *sys.argv[1:]]))

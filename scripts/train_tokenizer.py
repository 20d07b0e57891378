"""Entry point for `accelerate launch scripts/train_tokenizer.py --dataset ... --out ...` (same flags as
`vqgen train-tokenizer`)."""

import sys

from pipelines.cli import main

if __name__ == "__main__":
    sys.exit(main(["train-tokenizer", *sys.argv[1:]]))

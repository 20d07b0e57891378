"""Launched by test_distributed.py under torchrun: trains a tiny prior or VQ tokenizer with the shared loop and
writes this rank's final weights to OUT/rank{R}.safetensors."""

import os
import sys

import torch
from safetensors.torch import save_file

from pipelines.training.loop import TrainConfig, train
from pipelines.training.tasks import PriorTask, TokenGridDataset, TokenizerTask
from prior import build_prior
from tokenizers_vq import build_tokenizer


def main(kind: str, out: str, batch: int, steps: int) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    if kind == "prior":
        first = torch.randint(0, 4, (64, 2, 1), generator=g)
        data = TokenGridDataset(first.expand(64, 2, 3).contiguous(), torch.zeros(64, dtype=torch.long))
        task = PriorTask(build_prior(arch="lstm", vocab_size=4, shape=(2, 3), lstm_hidden=16, lstm_layers=1), "toy", 6)
    else:
        x = torch.rand(64, 1, 8, 8, generator=g)
        data = torch.utils.data.TensorDataset(x, torch.zeros(64, dtype=torch.long))
        tok = build_tokenizer(modality="image", quantizer="vq", image_size=8, hidden_channels=8, latent_dim=8,
                              num_res_blocks=1, codebook_size=16)
        task = TokenizerTask(tok, "toy")
    cfg = TrainConfig(out=out, steps=steps, batch_size=batch, lr=1e-2, eval_every=steps, save_every=steps,
                      progress=False, seed=1)
    train(task, data, None, cfg)
    rank = int(os.environ.get("RANK", "0"))
    model = task.model
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, os.path.join(out, f"rank{rank}.safetensors"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))

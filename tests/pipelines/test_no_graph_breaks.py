"""The training step traces into one torch.compile graph: no host syncs (``.item()``) left in the loss path."""

import pytest
import torch

from pipelines.training.tasks import PriorLossWrapper
from prior import build_prior
from tokenizers_vq import build_tokenizer

dynamo = pytest.importorskip("torch._dynamo")


def test_prior_training_loss_has_no_graph_breaks():
    prior = build_prior(arch="transformer", vocab_size=64, shape=(4, 4), n_layer=1, d_model=32, n_head=2,
                        num_classes=3)
    explained = dynamo.explain(PriorLossWrapper(prior))(torch.randint(0, 64, (4, 4, 4)), torch.tensor([0, 1, 2, 0]))
    assert explained.graph_break_count == 0, [str(b.reason) for b in explained.break_reasons]


@pytest.mark.parametrize("quantizer", ["fsq", "gumbel"])
def test_tokenizer_training_forward_has_no_graph_breaks(quantizer):
    tok = build_tokenizer(modality="image", quantizer=quantizer, image_size=8, hidden_channels=8, latent_dim=8,
                          num_res_blocks=1, fsq_levels=[5, 5], codebook_size=16).train()
    explained = dynamo.explain(tok)(torch.rand(2, 1, 8, 8))
    assert explained.graph_break_count == 0, [str(b.reason) for b in explained.break_reasons]

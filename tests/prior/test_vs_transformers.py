"""The Transformer prior against an independent reference, Hugging Face transformers' GPT-2 (minGPT's check).
(The bench that times the two, bench/vs_transformers.py, is tested in tests/bench/test_vs_transformers.py.)"""

from __future__ import annotations

import pytest
import torch

from prior import build_prior

transformers = pytest.importorskip("transformers")

V, L, D, LAYERS, HEADS = 11, 9, 16, 2, 2
START = 3  # the GPT-2 token whose embedding plays our start vector


def gpt2_and_ours():
    """A GPT-2 with exact GELU and randomised weights, and our 1-D prior carrying the same weights.

    Our input at position i is emb(x[i-1]) + pos(i) (the start vector at 0); GPT-2's is wte(y[i]) + wpe(i).
    With y = [START, x[0], ..., x[L-2]], start = wte[START], pos = wpe and our head = GPT-2's lm_head (untied here: tied, greedy decoding repeats one token; bias
    0), both compute the same function: our logits at i == GPT-2's logits at i."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=V, n_positions=L, n_embd=D, n_layer=LAYERS, n_head=HEADS, activation_function="gelu",
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=START, eos_token_id=None,
                     pad_token_id=START, attn_implementation="sdpa", tie_word_embeddings=False)
    hf = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():  # GPT-2's N(0, 0.02) init gives near-uniform logits: too easy a comparison
            p.add_(torch.randn_like(p) * 0.3)
    ours = build_prior(arch="transformer", vocab_size=V, shape=(L,), n_layer=LAYERS, n_head=HEADS, d_model=D).eval()
    net, t = ours.net, hf.transformer
    with torch.no_grad():
        net.tok_embed.weight.copy_(t.wte.weight)
        net.start.copy_(t.wte.weight[START])
        net.pos_embed.weight.copy_(t.wpe.weight)
        for ob, hb in zip(net.blocks, t.h):
            fc, _, out = ob.mlp
            for mine, theirs in ((ob.ln1, hb.ln_1), (ob.ln2, hb.ln_2)):
                mine.weight.copy_(theirs.weight)
                mine.bias.copy_(theirs.bias)
            # GPT-2's Conv1D stores [in, out]; nn.Linear [out, in]. Its c_attn is [q | k | v], heads inside each
            for mine, theirs in ((ob.attn.qkv, hb.attn.c_attn), (ob.attn.proj, hb.attn.c_proj), (fc, hb.mlp.c_fc),
                                 (out, hb.mlp.c_proj)):
                mine.weight.copy_(theirs.weight.t())
                mine.bias.copy_(theirs.bias)
        net.ln_f.weight.copy_(t.ln_f.weight)
        net.ln_f.bias.copy_(t.ln_f.bias)
        net.head.weight.copy_(hf.lm_head.weight)
        net.head.bias.zero_()
    return hf, ours


def test_logits_and_greedy_samples_match_gpt2() -> None:
    hf, ours = gpt2_and_ours()
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, V, (4, L), generator=g)
    y = torch.cat([torch.full((4, 1), START), x[:, :-1]], 1)
    with torch.no_grad():
        ref = hf(input_ids=y).logits
        full = ours.net(x)
        torch.testing.assert_close(full, ref, rtol=0, atol=2e-5)
        assert ref.std() > 1.0  # far from uniform: the comparison is not between two near-constant outputs
        cache = ours.net.init_cache(4, torch.device("cpu"))  # the decoding fast path, position by position
        for pos in range(L):
            torch.testing.assert_close(ours.net.step(cache, x, pos, None), ref[:, pos], rtol=0, atol=2e-5)
        # greedy decoding: GPT-2's generate from the start token and our cached sampling pick the same tokens
        gen = hf.generate(torch.full((1, 1), START), attention_mask=torch.ones(1, 1, dtype=torch.long),
                          do_sample=False, max_new_tokens=L - 1, pad_token_id=START)
    mine = ours.sample(1, temperature=0)
    assert torch.equal(mine[:, : L - 1], gen[:, 1:])
    assert len(set(mine[0].tolist())) > 2  # not a constant sequence

"""The CUDA subset (``bench/gpu_check.sh`` step 2): tokenizers and priors on the GPU give what they give on the CPU
(values and gradients), the sparse prior's compiled FlexAttention path equals its factorised path and the
dense-masked reference, cached sampling equals uncached sampling on the device, and the two training stages run a few
bf16 steps on the GPU and save folders that load and reproduce the recorded held-out NLL.

Skipped without CUDA. ``VQGEN_TEST_DEVICE=cpu`` (what ``bench/gpu_check.sh --dry-run`` sets) runs the same tests
with the CPU as the device under test: CPU against CPU, so it proves the tests run, not that the GPU agrees; flex
then runs eager and forward only (FlexAttention has no CPU backward).
"""

from __future__ import annotations

import copy
import math
import os

import pytest
import torch

from prior import build_prior, load_prior
from tokenizers_vq import TokenizerConfig, build_tokenizer, load_tokenizer

DEVICE = os.environ.get("VQGEN_TEST_DEVICE") or ("cuda" if torch.cuda.is_available() else "")
ON_CUDA = DEVICE.startswith("cuda")
FLEX = "flex" if ON_CUDA else "flex_eager"
pytestmark = pytest.mark.skipif(not DEVICE, reason="needs CUDA (VQGEN_TEST_DEVICE=cpu walks these tests on the CPU)")

TOL = dict(atol=1e-3, rtol=1e-3)  # CPU vs GPU kernels in fp32 (TF32 off); a wrong mask or layout is off by ~0.1-1
# head dimension 16 everywhere: FlexAttention's CUDA kernels want at least 16
# The sparse priors the flex tests compile (the same configs everywhere, so the compiled kernels are reused):
# strided on 300 positions (not a multiple of the stride 17 nor of flex's 128-tiles), fixed on a 16 x 16 grid.
SPARSE = {"strided": dict(shape=(300,), stride=17), "fixed": dict(shape=(16, 16), stride=16, summary=2)}
PRIORS = {
    "transformer": dict(arch="transformer", shape=(6, 7), n_layer=2, n_head=2, d_model=32),
    "sparse_strided": dict(arch="sparse_transformer", attention="strided", n_layer=2, n_head=4, d_model=64,
                           **SPARSE["strided"]),
    "sparse_fixed": dict(arch="sparse_transformer", attention="fixed", n_layer=2, n_head=2, d_model=32,
                         **SPARSE["fixed"]),
    "pixelcnn": dict(arch="pixelcnn", shape=(6, 7), pixelcnn_layers=3, pixelcnn_channels=16),
    "wavenet": dict(arch="wavenet", shape=(40,), residual_channels=16, skip_channels=16, dilation_cycle=4),
}


@pytest.fixture(scope="module", autouse=True)
def _compile_flex_per_shape():
    """dynamo compiles flex once per (mask, shape, dtype); these tests need more than its default 8 recompilations,
    after which it would silently fall back to eager flex and no longer test the compiled kernels."""
    import torch._dynamo

    config = torch._dynamo.config
    names = [n for n in ("recompile_limit", "cache_size_limit") if hasattr(config, n)]
    old = {n: getattr(config, n) for n in names}
    for n in names:
        setattr(config, n, max(64, old[n]))
    yield
    for n, v in old.items():
        setattr(config, n, v)


@pytest.fixture(autouse=True)
def _exact_fp32():
    """TF32 matmuls and convolutions would put CUDA fp32 ~1e-3 away from the CPU: IEEE fp32 for these tests, set
    through torch's newer per-backend API where it exists (mixing it with the legacy flags can be an error)."""
    mm, conv = torch.backends.cuda.matmul, getattr(torch.backends.cudnn, "conv", None)
    if hasattr(mm, "fp32_precision") and hasattr(conv, "fp32_precision"):
        targets = [(mm, "fp32_precision", "ieee"), (conv, "fp32_precision", "ieee")]
    else:
        targets = [(mm, "allow_tf32", False), (torch.backends.cudnn, "allow_tf32", False)]
    old = [(obj, name, getattr(obj, name)) for obj, name, _ in targets]
    for obj, name, value in targets:
        setattr(obj, name, value)
    yield
    for obj, name, value in old:
        setattr(obj, name, value)


def _perturbed(prior):  # noqa: ANN001, ANN202
    """Random-init priors predict nearly uniform logits, which hide mistakes: spread the weights."""
    with torch.no_grad():
        for p in prior.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return prior


def _grads(model) -> dict[str, torch.Tensor]:  # noqa: ANN001
    return {n: p.grad.detach().cpu() for n, p in model.named_parameters() if p.grad is not None}


# ---------------------------------------------------------------------------------------------- tokenizers
@pytest.mark.parametrize("kind", ["image_fsq", "image_vq", "audio_istft"])
def test_tokenizer_on_device_matches_cpu(kind: str) -> None:
    """encode / decode / forward loss on the device == on the CPU; the straight-through gradient reaches the
    encoder on the device."""
    if kind.startswith("image"):
        cfg = TokenizerConfig(modality="image", quantizer=kind[6:], channels=3, image_size=16, hidden_channels=8,
                              latent_dim=8, num_res_blocks=1, codebook_size=32, fsq_levels=[5, 4], kmeans_init=False)
        x = torch.rand(4, 3, 16, 16)
    else:
        cfg = TokenizerConfig(modality="audio", audio_head="istft", quantizer="fsq", fsq_levels=[5, 5], latent_dim=8,
                              istft_dim=16, istft_layers=1, sample_rate=8000, clip_samples=1600)
        x = torch.rand(3, 1600) * 1.6 - 0.8
    cpu = build_tokenizer(cfg).eval()
    dev = copy.deepcopy(cpu).to(DEVICE)
    codes = cpu.encode(x)
    codes_d = dev.encode(x.to(DEVICE))
    assert codes_d.device.type == torch.device(DEVICE).type and codes_d.dtype == torch.int64
    # a latent within float error of a rounding (fsq) or nearest-code (vq) boundary may flip: nearly all agree
    agree = (codes_d.cpu() == codes).float().mean().item()
    assert agree >= 0.97, f"only {agree:.1%} of the tokens agree between {DEVICE} and cpu"
    torch.testing.assert_close(dev.decode(codes.to(DEVICE)).cpu(), cpu.decode(codes), **TOL)
    with torch.no_grad():
        loss_c, loss_d = cpu(x).loss, dev(x.to(DEVICE)).loss
    torch.testing.assert_close(loss_d.cpu(), loss_c, **TOL)
    dev.train()
    dev(x.to(DEVICE)).loss.backward()
    enc = [p.grad for n, p in dev.named_parameters() if n.startswith("model.encoder") and p.grad is not None]
    assert enc and all(torch.isfinite(g).all() for g in enc) and any(g.abs().sum() > 0 for g in enc)


# ---------------------------------------------------------------------------------------------- priors
@pytest.mark.parametrize("name", list(PRIORS))
def test_prior_on_device_matches_cpu(name: str) -> None:
    """Logits, log_prob and the loss's gradients on the device == on the CPU (the sparse priors: the device's
    default path, compiled flex on CUDA, against the CPU's dense-masked reference)."""
    torch.manual_seed(0)
    cpu = _perturbed(build_prior(vocab_size=7, **PRIORS[name])).eval()
    if name.startswith("sparse"):
        cpu.net.impl = "dense"
    dev = copy.deepcopy(cpu).to(DEVICE)
    if name.startswith("sparse"):
        dev.net.impl = "auto"  # flex on CUDA
    x = torch.randint(0, 7, (2, *cpu.shape))  # batch 2, as in the next test: the compiled flex kernels are shared
    torch.testing.assert_close(dev(x.to(DEVICE)).cpu(), cpu(x), **TOL)
    torch.testing.assert_close(dev.log_prob(x.to(DEVICE)).cpu(), cpu.log_prob(x), atol=1e-2, rtol=1e-3)
    if name.startswith("sparse") and not ON_CUDA:
        return  # "auto" on the CPU is the dense reference itself: the gradient check below needs a GPU
    cpu.loss(x).backward()
    dev.loss(x.to(DEVICE)).backward()
    gc, gd = _grads(cpu), _grads(dev)
    assert gc.keys() == gd.keys() and gc
    for k in gc:
        torch.testing.assert_close(gd[k], gc[k], atol=2e-3, rtol=2e-3, msg=k)


@pytest.mark.parametrize("attention", ["strided", "fixed"])
def test_sparse_paths_agree_on_device(attention: str) -> None:
    """On the device: flex (compiled on CUDA) == factorised == dense-masked, logits and gradients (flex's gradients on
    CUDA only); and the same under bf16 autocast, the training setting, within bf16's precision."""
    torch.manual_seed(0)
    p = _perturbed(build_prior(arch="sparse_transformer", vocab_size=7, attention=attention, n_layer=2,
                               n_head=4 if attention == "strided" else 2, d_model=64 if attention == "strided" else 32,
                               **SPARSE[attention]))
    p = p.to(DEVICE).train()
    x = torch.randint(0, 7, (2, *p.shape), device=DEVICE)
    out, grads = {}, {}
    for impl in ("dense", "factorised", FLEX):
        p.net.impl = impl
        p.zero_grad(set_to_none=True)
        if impl == "flex_eager":  # CPU: forward only
            with torch.no_grad():
                out[impl] = p(x).cpu()
            continue
        out[impl] = p(x).detach().cpu()
        p.loss(x).backward()
        grads[impl] = _grads(p)
    for impl in ("factorised", FLEX):
        torch.testing.assert_close(out[impl], out["dense"], **TOL, msg=impl)
        for k, g in grads.get(impl, {}).items():
            torch.testing.assert_close(g, grads["dense"][k], atol=2e-3, rtol=2e-3, msg=f"{impl} {k}")
    if ON_CUDA:
        bf16 = {}
        for impl in ("dense", "flex"):
            p.net.impl = impl
            with torch.autocast("cuda", dtype=torch.bfloat16), torch.no_grad():
                bf16[impl] = p(x).float().cpu()
        # bf16 keeps 8 bits of mantissa: on the CPU (autocast) the dense path lands 1.6-3.1% of the logits' scale
        # from fp32 with these weights, and the factorised path 0.1-0.3% from the dense one
        scale = out["dense"].abs().max().item()
        assert (bf16["flex"] - bf16["dense"]).abs().max().item() < 0.02 * scale
        assert (bf16["flex"] - out["dense"]).abs().max().item() < 0.1 * scale


@pytest.mark.parametrize("name", ["transformer", "sparse_strided", "pixelcnn", "wavenet"])
def test_cached_sampling_equals_uncached_on_device(name: str) -> None:
    """With the same device generator, the KV-cache (or incremental) path and full forwards give the same tokens."""
    torch.manual_seed(0)
    cfg = PRIORS[name] | ({"shape": (40,), "stride": 6} if name == "sparse_strided" else {})  # 40 uncached forwards
    p = _perturbed(build_prior(vocab_size=7, **cfg)).to(DEVICE).eval()
    if name == "sparse_strided":  # the cache reads each head's window; uncached forwards of every prefix length
        p.net.impl = "dense"       # run the dense-masked reference (compiled flex would compile once per length)
    a = p.sample(3, generator=torch.Generator(device=DEVICE).manual_seed(5), use_cache=True)
    b = p.sample(3, generator=torch.Generator(device=DEVICE).manual_seed(5), use_cache=False)
    assert a.device.type == torch.device(DEVICE).type and a.shape == (3, *p.shape)
    assert 0 <= int(a.min()) and int(a.max()) < 7
    assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------- training stages
def _token_folder(path, n: int = 64):  # noqa: ANN001, ANN202
    from pipelines.data.tokens import TokenHeader, save_tokens
    from tokenizers_vq import RawCodec

    record = RawCodec("image", 256, (1, 8, 8)).record()
    record["token_shape"] = [8, 8]
    g = torch.Generator().manual_seed(0)
    # tokens with structure (a smooth ramp plus noise), so a few steps already lower the NLL
    base = (torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 16
    tr = (base + torch.randint(0, 3, (n, 8, 8), generator=g)) % 16
    te = (base + torch.randint(0, 3, (32, 8, 8), generator=g)) % 16
    save_tokens(path, TokenHeader(vocab_size=16, token_shape=(8, 8), modality="image", dataset="toy", codec=record),
                {"train": (tr, torch.full((n,), -1)), "test": (te, torch.full((32,), -1))})
    return path, te


@pytest.mark.parametrize("arch", ["transformer", "sparse_transformer"])
def test_train_prior_runs_bf16_on_device_and_its_folder_reloads(tmp_path, arch: str) -> None:
    from pipelines.stages.train import train_prior
    from pipelines.training.config import TrainConfig

    tokens, te = _token_folder(tmp_path / "tok")
    cfg = TrainConfig(out=str(tmp_path / "prior"), steps=6, batch_size=16, lr=3e-3, eval_every=3, save_every=3,
                      mixed_precision="bf16", device=DEVICE, progress=False)
    res = train_prior(tokens, {"arch": arch, "n_layer": 2, "n_head": 2, "d_model": 32}, cfg)
    assert res.status == "finished" and res.step == 6 and math.isfinite(res.metrics["nll_nats"])
    prior = load_prior(str(tmp_path / "prior")).to(DEVICE)
    assert all(p.dtype == torch.float32 for p in prior.parameters())  # autocast: the weights stay fp32
    if arch == "sparse_transformer":
        prior.net.impl = "factorised"  # the weights are under test here, not flex (no new compilation for batch 32)
    with torch.no_grad():
        nll = -prior.log_prob(te.long().to(DEVICE)).double().mean().item()
    # the saved weights are the trained ones: fp32 reload == the run's bf16 evaluation, within bf16's error
    assert abs(nll - res.metrics["nll_nats"]) < 0.03 * res.metrics["nll_nats"], (nll, res.metrics)
    assert nll < 64 * math.log(16)  # and better than the uniform code (first steps of a real fit)


def test_train_tokenizer_runs_bf16_on_device_and_its_folder_reloads(tmp_path) -> None:
    from pipelines.stages.train import train_tokenizer
    from pipelines.training.config import TrainConfig

    cfg = TrainConfig(out=str(tmp_path / "tok"), steps=4, batch_size=8, eval_every=2, save_every=2,
                      mixed_precision="bf16", device=DEVICE, progress=False)
    res = train_tokenizer({"name": "shapes", "image_size": 16, "limit": 64},
                          {"quantizer": "fsq", "hidden_channels": 8, "latent_dim": 8, "num_res_blocks": 1,
                           "fsq_levels": [5, 4]}, cfg, eval_limit=32)
    assert res.status == "finished" and res.step == 4
    assert all(math.isfinite(v) for v in res.metrics.values() if isinstance(v, float))
    tok = load_tokenizer(str(tmp_path / "tok")).to(DEVICE).eval()
    x = torch.rand(2, 3, 16, 16, device=DEVICE)
    codes = tok.encode(x)
    assert codes.shape == (2, 4, 4) and 0 <= int(codes.min()) and int(codes.max()) < tok.vocab_size
    y = tok.decode(codes)
    assert y.shape == x.shape and torch.isfinite(y).all()

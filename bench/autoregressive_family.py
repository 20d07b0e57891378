"""The autoregressive family on one footing (issue 14): held-out NLL and training seconds per prior, softmax vs
logistic-mixture heads on 8-bit pixels, and BPE over codec tokens.

Run: ``OMP_NUM_THREADS=1 python -m bench.autoregressive_family`` (writes bench/results/autoregressive_family.json
and docs/benchmarks/autoregressive_family.md). ``--budget S`` sets each neural prior's training wall clock
(default 30 s); ``--work DIR`` holds the token folders and the audio tokenizer it trains for the BPE part.

1. Binarised mnist5k (32x32, 4,500 train / 500 test digits): histogram, n-gram (JBIG template, several
   context sizes), MADE with a fixed raster order vs order-agnostic training evaluated with 1 and 8 orderings
   (Germain et al. 2015, Table 2), gated PixelCNN, Transformer; nats per digit and training seconds.
2. 8-bit mnist5k at 16x16 (so the 256-bin mixture fits the CPU budget): PixelCNN with a 256-way softmax vs a
   5-component discretised logistic mixture, same training budget; bits per dimension.
3. BPE: the FSQ tokenizer of ``vqgen demo`` on mnist5k (``--image-tokenizer``), and a small FSQ audio tokenizer
   trained here for ``--audio-budget`` seconds on spoken-digits; merged-sequence length, a Transformer's bits
   per original token with and without BPE (same budget), sampling speed in original tokens per second.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from bench.common import ROOT, cpu_model, write_results

LN2 = math.log(2)


def train_for(prior, tokens: torch.Tensor, seconds: float, batch: int = 32, lr: float = 1e-3) -> tuple[float, int]:
    """Adam on random batches of tokens [N, *shape] until ``seconds`` of wall clock: (seconds, steps)."""
    opt = torch.optim.Adam(prior.parameters(), lr=lr)
    g = torch.Generator().manual_seed(0)
    prior.train()
    t0, steps = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        idx = torch.randint(0, len(tokens), (batch,), generator=g)
        opt.zero_grad()
        prior.loss(tokens[idx], check_values=False).backward()
        opt.step()
        steps += 1
    prior.eval()
    return time.perf_counter() - t0, steps


@torch.no_grad()
def nll(prior, tokens: torch.Tensor, batch: int = 100) -> float:
    """Mean held-out NLL in nats per grid."""
    prior.eval()
    return -torch.cat([prior.log_prob(tokens[i: i + batch]).double() for i in range(0, len(tokens), batch)]).mean().item()


def family(train: torch.Tensor, test: torch.Tensor, budget: float) -> list[dict]:
    from prior import build_prior

    shape, rows = tuple(train.shape[1:]), []

    def add(name: str, prior, seconds: float, steps: int | None, ensemble: int | None = None) -> None:
        if ensemble is not None:
            prior.config.made_ensemble = ensemble  # the net reads it from the same config
        t0 = time.perf_counter()
        v = nll(prior, test)
        rows.append({"prior": name, "nats_per_digit": v, "train_seconds": seconds, "steps": steps,
                     "eval_seconds": time.perf_counter() - t0})
        print(rows[-1], flush=True)

    p = build_prior(arch="histogram", vocab_size=2, shape=shape)
    t0 = time.perf_counter()
    p.fit(train)
    add("histogram (per-pixel Bernoulli)", p, time.perf_counter() - t0, None)
    for k in (4, 10, 14):
        p = build_prior(arch="ngram", vocab_size=2, shape=shape, ngram_order=k)
        t0 = time.perf_counter()
        p.fit(train)
        add(f"ngram, JBIG template k={k} (Kneser-Ney)", p, time.perf_counter() - t0, None)
    torch.manual_seed(0)
    p = build_prior(arch="made", vocab_size=2, shape=shape, made_hidden=(500,))
    add("MADE, fixed raster order, 1 hidden layer of 500", p, *train_for(p, train, budget, lr=3e-3))
    torch.manual_seed(0)
    p = build_prior(arch="made", vocab_size=2, shape=shape, made_hidden=(500,), made_order="agnostic",
                    made_num_masks=32)
    secs, steps = train_for(p, train, budget, lr=3e-3)
    add("MADE, order-agnostic (32 orderings), ensemble K=1", p, secs, steps, ensemble=1)
    add("MADE, order-agnostic (32 orderings), ensemble K=8", p, secs, steps, ensemble=8)
    torch.manual_seed(0)
    p = build_prior(arch="pixelcnn", vocab_size=2, shape=shape, pixelcnn_channels=32, pixelcnn_layers=5)
    add("gated PixelCNN, 5 layers x 32 channels", p, *train_for(p, train, budget))
    torch.manual_seed(0)
    p = build_prior(arch="transformer", vocab_size=2, shape=shape, d_model=64, n_layer=2, n_head=4)
    add("Transformer, 2 layers x 64", p, *train_for(p, train, budget, batch=16))
    return rows


def heads(train: torch.Tensor, test: torch.Tensor, budget: float) -> list[dict]:
    from prior import build_prior

    rows = []
    dims = math.prod(train.shape[1:])
    for output in ("softmax", "logistic_mixture"):
        torch.manual_seed(0)
        p = build_prior(arch="pixelcnn", vocab_size=256, shape=tuple(train.shape[1:]), pixelcnn_channels=32,
                        pixelcnn_layers=5, output=output)
        secs, steps = train_for(p, train, budget, batch=16)
        v = nll(p, test)
        rows.append({"output": output, "bits_per_dim": v / LN2 / dims, "train_seconds": secs, "steps": steps,
                     "parameters": sum(q.numel() for q in p.parameters())})
        print(rows[-1], flush=True)
    return rows


def vqgen(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pipelines.cli", *args, "--quiet"], check=True, cwd=ROOT)


def bpe_rows(name: str, tok_dir: Path, bpe_vocab: int, work: Path, budget: float) -> dict:
    """BPE on one token folder: length reduction, a Transformer's bits per original token with / without BPE,
    sampling speed in original tokens per second."""
    from pipelines.data.bpe import BPE, write_bpe_token_folder
    from pipelines.data.tokens import load_token_header, load_tokens
    from prior import build_prior

    header = load_token_header(tok_dir)
    L = math.prod(header.token_shape)
    t0 = time.perf_counter()
    tr, _ = load_tokens(tok_dir, "train")
    BPE.train(tr, bpe_vocab, header.vocab_size).save(work / f"{name}_bpe")
    bpe_seconds = time.perf_counter() - t0
    stats = write_bpe_token_folder(tok_dir, work / f"{name}_bpe", work / f"{name}_merged")
    bpe = BPE.load(work / f"{name}_bpe")
    out = {"dataset": name, "codec_vocab": header.vocab_size, "tokens_per_input": L, "bpe_vocab": bpe.info.merged_vocab,
           "bpe_train_seconds": bpe_seconds, **{k: stats[k] for k in ("mean_merged_length", "max_len", "reduction")}}
    for label, folder in (("codec tokens", tok_dir), ("BPE", work / f"{name}_merged")):
        h = load_token_header(folder)
        train, _ = load_tokens(folder, "train")
        test, _ = load_tokens(folder, "test")
        torch.manual_seed(0)
        p = build_prior(arch="transformer", vocab_size=h.vocab_size, shape=tuple(h.token_shape), d_model=64,
                        n_layer=2, n_head=4)
        secs, steps = train_for(p, train, budget)
        bits = nll(p, test) / LN2 / L  # per ORIGINAL token: the padded merged sequence codes the whole grid
        t0 = time.perf_counter()
        s = p.sample(16, generator=torch.Generator().manual_seed(0))
        if h.bpe:
            codes, lengths = bpe.decode(s)
            n_codes = int(lengths.clamp(max=L).sum())
        else:
            n_codes = s.numel()
        rate = n_codes / (time.perf_counter() - t0)
        out[label] = {"bits_per_original_token": bits, "train_seconds": secs, "steps": steps,
                      "sample_original_tokens_per_s": rate, "positions": int(math.prod(h.token_shape))}
        print(name, label, out[label], flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", type=float, default=30.0, help="training seconds per neural prior")
    ap.add_argument("--image-tokenizer", default="runs/demo/tokenizer")
    ap.add_argument("--audio-budget", type=float, default=60.0, help="seconds to train the spoken-digits tokenizer")
    ap.add_argument("--work", default="runs/bench-autoregressive")
    a = ap.parse_args()
    from pipelines.data import DataSpec, load_data
    from tokenizers_vq import quantize_raw

    work = (ROOT / a.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    splits = load_data(DataSpec("mnist5k"))
    xs, _ = splits.train.tensors
    xt, _ = splits.test.tensors
    fam = family(quantize_raw(xs, 2), quantize_raw(xt, 2), a.budget)
    small = torch.nn.functional.interpolate  # 16x16 8-bit: area-averaged
    hd = heads(quantize_raw(small(xs, size=(16, 16), mode="area"), 256),
               quantize_raw(small(xt, size=(16, 16), mode="area"), 256), a.budget)
    bpe = []
    img_tok = work / "mnist5k_tokens"
    if (ROOT / a.image_tokenizer / "config.json").is_file():
        if not (img_tok / "tokens.json").is_file():
            vqgen("tokenize", "--tokenizer", a.image_tokenizer, "--dataset", "mnist5k", "--out", str(img_tok))
        bpe.append(bpe_rows("mnist5k", img_tok, 4000, work, a.budget))
    aud = work / "spoken_tokenizer"
    if not (aud / "model.safetensors").is_file():
        vqgen("train-tokenizer", "--modality", "audio", "--audio-head", "logistic", "--quantizer", "fsq", "--dataset", "spoken-digits",
              "--max-seconds", str(a.audio_budget), "--steps", "100000", "--out", str(aud))
    aud_tok = work / "spoken_tokens"
    if not (aud_tok / "tokens.json").is_file():
        vqgen("tokenize", "--tokenizer", str(aud), "--dataset", "spoken-digits", "--out", str(aud_tok))
    bpe.append(bpe_rows("spoken-digits", aud_tok, 4000, work, a.budget))

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    machine = {"cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
               "torch": torch.__version__, "load_average_1min_at_end": load}
    results = {"family": fam, "heads": hd, "bpe": bpe, "budget_seconds": a.budget, "machine": machine,
               "total_seconds": time.perf_counter() - t_all}
    md = ["# The autoregressive family (issue 14)", "",
          f"`OMP_NUM_THREADS=1 python -m bench.autoregressive_family --budget {a.budget:g}` (one run each). CPU "
          f"({machine['cpu']}, {machine['torch_threads']} thread, torch {machine['torch']}), measured on a shared, "
          f"loaded machine (1-min load average {load:.1f} at the end), so training seconds are wall clock under "
          "load: compare them within this table only. Neural priors train for the same wall-clock budget with "
          "Adam; count-based ones are fitted by counting.", "",
          "## Binarised mnist5k, held-out NLL", "",
          "4,500 training / 500 test digits, 32x32 binarised pixels (1,024 per digit).", "",
          "| prior | nats / digit | training s | steps |", "|---|---:|---:|---:|"]
    md += [f"| {r['prior']} | {r['nats_per_digit']:.1f} | {r['train_seconds']:.1f} | {r['steps'] or '-'} |" for r in fam]
    md += ["", "The neural priors are far from converged at this budget (the steps column says how far each got): "
           "the table compares what each gets from the same wall clock on a loaded CPU, not their best NLL.", "",
           "MADE order-agnostic: trained on 32 orderings in turn (one per update); K=8 averages p over the "
           "first 8 in probability space (still a normalised likelihood); sampling follows ordering 0. The two "
           "K rows are one trained model.", "",
           "## 8-bit mnist5k (16x16), softmax vs logistic mixture", "",
           "Gated PixelCNN (5 x 32), the same training budget; bits per dimension on the 500 test digits.", "",
           "| head | bits / dim | training s | steps | parameters |", "|---|---:|---:|---:|---:|"]
    md += [f"| {r['output']} | {r['bits_per_dim']:.3f} | {r['train_seconds']:.1f} | {r['steps']} | {r['parameters']:,} |"
           for r in hd]
    md += ["", "## BPE over codec tokens", "",
           "Merges learnt with Hugging Face `tokenizers` on the training split; a 2 x 64 Transformer trained for "
           "the same budget on the codec tokens and on the merged, end-padded sequences. Bits per original token = "
           "held-out NLL of the whole (padded) sequence / codec tokens per input. Sampling: 16 sequences with the "
           "KV cache, original tokens decoded per second (a BPE sample that ends early decodes fewer tokens; sampling "
           "cost grows with the merged vocabulary's head).", "",
           "| data | codec vocab | tokens / input | BPE vocab | mean merged length | reduction | bits / token (codec) "
           "| bits / token (BPE) | sample tok/s (codec) | sample tok/s (BPE) |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in bpe:
        c, b = r["codec tokens"], r["BPE"]
        md.append(f"| {r['dataset']} | {r['codec_vocab']} | {r['tokens_per_input']} | {r['bpe_vocab']} | "
                  f"{r['mean_merged_length']:.1f} | {r['reduction']:.2f}x | {c['bits_per_original_token']:.3f} | "
                  f"{b['bits_per_original_token']:.3f} | {c['sample_original_tokens_per_s']:.0f} | "
                  f"{b['sample_original_tokens_per_s']:.0f} |")
    md += ["", f"Tokenizers: mnist5k, `{a.image_tokenizer}` (the `vqgen demo` FSQ tokenizer); spoken-digits, an FSQ "
           f"audio tokenizer trained here for {a.audio_budget:g} s (`vqgen train-tokenizer --max-seconds`), so its "
           "codes are those of an undertrained codec.", f"Total bench time {results['total_seconds']:.0f} s."]
    write_results("autoregressive_family", results, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()

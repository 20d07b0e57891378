"""Our Transformer prior against Hugging Face transformers' GPT-2 at the same sizes, on CPU, fp32.

Same sizes as issue 12 item 5: vocabulary 1024, 256 positions, 4 layers, 4 heads, d 256, dropout 0.

* ours: ``build_prior(PriorConfig(arch="transformer", vocab_size=1024, shape=(256,), n_layer=4, n_head=4,
  d_model=256, dropout=0.0))``;
* peer: ``transformers.GPT2LMHeadModel(GPT2Config(vocab_size=1024, n_positions=256, n_layer=4, n_head=4, n_embd=256,
  attn_implementation="sdpa", resid/embd/attn dropout 0))``, used as its documentation shows.

Three measurements, each a ratio = peer time / our time (> 1: ours is faster):

1. ``train``: one training step, batch 16 x 256 tokens: forward + loss + backward + ``torch.optim.AdamW`` step
   (ours ``prior.loss(x)``, the peer ``model(input_ids=x, labels=x).loss``);
2. ``sample_b1`` / ``sample_b16``: 256 tokens with a KV cache at batch 1 and 16 (ours ``prior.sample(n)``, whose
   first position is predicted from the start vector; the peer ``generate(prompt [n, 1], do_sample=True,
   max_new_tokens=255, min_new_tokens=255, top_k=0)``: a 1-token prompt + 255 new = its 256 positions, one forward
   fewer than ours; ``top_k=0`` turns off GPT-2's default top-50 filter, so both draw from the full softmax).

Each round times every measurement once for each model, alternating which goes first; the reported time is the
median over rounds and the ratio the median of the per-round ratios (both models of a ratio ran back to back, so
a load spike from the shared machine hits both). One untimed warm-up call each (allocator, thread pool, and the
compiled decoding step when our prior compiles one).

Run: ``OMP_NUM_THREADS=1 python -m bench.vs_transformers`` (1 torch thread: on the shared 2-core machine an
OpenMP peer thread that is descheduled spins at every barrier; ``--threads 2`` to try). Writes
bench/results/vs_transformers.json and docs/benchmarks/vs_transformers.md. ``--quick``: tiny sizes, one round, no
files unless ``--json PATH`` (the test's smoke run).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from bench.common import cpu_model, write_results
from prior import PriorConfig, build_prior

FULL = dict(vocab=1024, positions=256, layers=4, heads=4, d=256, train_batch=16, sample_batches=(1, 16))
QUICK = dict(vocab=64, positions=16, layers=1, heads=2, d=32, train_batch=2, sample_batches=(1, 2))
GOALS = {"train": 1.5, "sample_b1": 2.0, "sample_b16": 2.0}  # issue 12 item 5


def build_models(s: dict) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(our prior, the HF GPT-2 peer), both freshly initialised, fp32, on CPU."""
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging

    logging.set_verbosity_error()  # its advice about attention masks and padding does not apply here

    torch.manual_seed(0)
    ours = build_prior(PriorConfig(arch="transformer", vocab_size=s["vocab"], shape=(s["positions"],),
                                   n_layer=s["layers"], n_head=s["heads"], d_model=s["d"], dropout=0.0))
    cfg = GPT2Config(vocab_size=s["vocab"], n_positions=s["positions"], n_layer=s["layers"], n_head=s["heads"],
                     n_embd=s["d"], resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0,
                     eos_token_id=None, pad_token_id=0, attn_implementation="sdpa")
    # no end token: generation never stops early, and min_new_tokens adds no logits processor
    peer = GPT2LMHeadModel(cfg)
    return ours, peer


def n_params(m: torch.nn.Module) -> int:
    """Distinct learned parameters (GPT-2's tied input/output embedding counted once)."""
    return sum(p.numel() for p in {id(p): p for p in m.parameters()}.values())


def train_step_fn(model: torch.nn.Module, x: torch.Tensor, peer: bool):
    """() -> None: one AdamW training step of ``model`` on tokens x int64 [B, L]."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = model(input_ids=x, labels=x).loss if peer else model.loss(x)
        loss.backward()
        opt.step()
    return step


def sample_fn(model: torch.nn.Module, batch: int, length: int, peer: bool, device: str = "cpu"):
    """() -> int64 [batch, length] tokens: one sampling call with a KV cache (``model`` already on ``device``)."""
    if peer:
        prompt = torch.zeros(batch, 1, dtype=torch.long, device=device)

        def run() -> torch.Tensor:
            model.eval()
            with torch.no_grad():
                return model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=True,
                                      max_new_tokens=length - 1, min_new_tokens=length - 1, top_k=0, pad_token_id=0)
    else:
        g = torch.Generator(device=device).manual_seed(1)

        def run() -> torch.Tensor:
            return model.sample(batch, generator=g)
    return run


def seconds(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call of ``fn()``."""
    t, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t, time.process_time() - c


def run(quick: bool, rounds: int, threads: int, only: list[str] | None = None) -> dict:
    """Measure every task; returns the results dict (ratios, medians, per-round times, machine, sizes)."""
    s = QUICK if quick else FULL
    ours, peer = build_models(s)
    L = s["positions"]
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, s["vocab"], (s["train_batch"], L), generator=g)
    tasks = {"train": (train_step_fn(ours, x, False), train_step_fn(peer, x, True))}
    for b in s["sample_batches"]:
        name = "sample_b1" if b == 1 else ("sample_b16" if not quick else f"sample_b{b}")
        tasks[name] = (sample_fn(ours, b, L, False), sample_fn(peer, b, L, True))
    # the quick run's second batch stands in for batch 16 so the JSON always carries the three ratios
    if quick:
        tasks["sample_b16"] = tasks.pop(f"sample_b{s['sample_batches'][1]}")
    if only:
        tasks = {k: v for k, v in tasks.items() if k in only}
    for o, p in tasks.values():  # warm-up, untimed
        o(), p()
    times: dict[str, dict[str, list[float]]] = {k: {"ours": [], "hf": []} for k in tasks}
    cpu: dict[str, dict[str, list[float]]] = {k: {"ours": [], "hf": []} for k in tasks}
    for r in range(rounds):
        for k, (o, p) in tasks.items():
            pair = [("ours", o), ("hf", p)] if r % 2 == 0 else [("hf", p), ("ours", o)]
            for who, fn in pair:
                wall, c = seconds(fn)
                times[k][who].append(wall)
                cpu[k][who].append(c)
        print(f"round {r + 1}/{rounds}: " + "  ".join(
            f"{k} ours {v['ours'][-1]:.3f}s hf {v['hf'][-1]:.3f}s" for k, v in times.items()), flush=True)

    def per_round_ratio(t: dict) -> dict[str, float]:
        return {k: statistics.median(h / o for h, o in zip(v["hf"], v["ours"])) for k, v in t.items()}

    ratios, cpu_ratios = per_round_ratio(times), per_round_ratio(cpu)
    medians = {k: {who: statistics.median(t) for who, t in v.items()} for k, v in times.items()}
    cpu_medians = {k: {who: statistics.median(t) for who, t in v.items()} for k, v in cpu.items()}
    machine = {"cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": threads, "torch": torch.__version__,
               "transformers": __import__("transformers").__version__, "python": platform.python_version(),
               "load_average_1min": os.getloadavg()[0]}
    return {"sizes": {k: list(v) if isinstance(v, tuple) else v for k, v in s.items()}, "rounds": rounds,
            "params": {"ours": n_params(ours), "hf": n_params(peer)}, "ratios": ratios, "goals": GOALS,
            "cpu_ratios": cpu_ratios, "median_seconds": medians, "median_cpu_seconds": cpu_medians, "seconds": times,
            "cpu_seconds": cpu, "machine": machine}


def markdown(res: dict, command: str) -> str:
    s, m, med, rat = res["sizes"], res["machine"], res["median_seconds"], res["ratios"]
    L = s["positions"]
    what = {"train": f"training step, batch {s['train_batch']} x {s['positions']}",
            "sample_b1": f"sampling {s['positions']} tokens, batch 1",
            "sample_b16": f"sampling {s['positions']} tokens, batch {s['sample_batches'][-1]}"}
    cmed, crat = res["median_cpu_seconds"], res["cpu_ratios"]
    rows = ["| task | ours s | GPT-2 s | ours is x faster | CPU s: ours / GPT-2 | x faster (CPU time) | goal |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for k in ("train", "sample_b1", "sample_b16"):
        met = "met" if rat[k] >= GOALS[k] else "not met"
        rows.append(f"| {what[k]} | {med[k]['ours']:.3f} | {med[k]['hf']:.3f} | **{rat[k]:.2f}x** | "
                    f"{cmed[k]['ours']:.3f} / {cmed[k]['hf']:.3f} | {crat[k]:.2f}x | {GOALS[k]}x ({met}) |")
    return "\n".join([
        "## Transformer prior vs Hugging Face GPT-2 (CPU)", "",
        f"Vocabulary {s['vocab']}, {s['positions']} positions, {s['layers']} layers, {s['heads']} heads, d {s['d']}, "
        f"dropout 0, fp32, on {m['cpu']} ({m['cores']} cores, {m['torch_threads']} torch thread(s)), torch "
        f"{m['torch']}, transformers {m['transformers']}. Parameters: ours {res['params']['ours']:,}, GPT-2 "
        f"{res['params']['hf']:,} (GPT-2 ties its output layer to the token embedding; ours has its own, "
        f"{res['params']['ours'] - res['params']['hf']:+,}).", "",
        *rows, "",
        f"Median of {res['rounds']} alternating rounds; the ratio is the median of the per-round ratios (GPT-2 time / "
        "ours), by the wall clock (the headline, judged against the goal) and by the process's CPU time (one thread: "
        "the time it actually ran, less sensitive to being descheduled on the shared machine). Training step: "
        "forward + loss + backward + AdamW (ours `prior.loss(x)`, GPT-2 `model(input_ids=x, labels=x).loss`). "
        f"Sampling: ours `prior.sample(n)` ({L} positions); GPT-2 `generate(do_sample=True, "
        f"max_new_tokens={L - 1}, min_new_tokens={L - 1}, top_k=0)` from a 1-token prompt (its {L} positions, one "
        "forward fewer; `top_k=0` turns off its default top-50 filter, so both draw from the full softmax), with its "
        "default dynamic KV cache. The machine was shared with other jobs (1-minute load average "
        f"{m['load_average_1min']:.1f} at the end). Command: `{command}`.", "",
        "Where the time goes (profiles taken while writing this bench, same machine). Training: both models run the "
        "same fp32 matrix products (about two thirds of our step) and the same causal flash-attention kernel (about "
        "15%), so the step is bound by the GEMMs; GPT-2's extra cost is mostly its tanh GELU written as separate "
        "ops. `torch.compile` of our training step (84 s to compile) fused the element-wise ops for roughly 10-15% "
        "in a noisy run, short of 1.5x, so `prior.loss` stays eager. Sampling: each step reads all weights (13.6 MB "
        "at these sizes) and, at batch 16, the KV cache (on average 17 MB over the 4 layers): at batch 1 GPT-2's "
        "per-token Python and cache concatenation dominate its time, at batch 16 the GEMMs (16 rows: about half of "
        "MKL's large-GEMM rate on this core) and the flash kernel streaming the cache are about three quarters of "
        "ours, and GPT-2 pays the same plus its per-step `torch.cat` of the cache. A compiled decoding step "
        "(inductor, dynamic positions) was slower than eager at batch 16, and two threads made both models erratic "
        "on the shared machine (an OpenMP thread whose peer is descheduled spins at every barrier).", ""])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, 1 round; writes files only with --json")
    ap.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 5; quick 1)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--tasks", nargs="*", choices=list(GOALS), default=None,
                    help="measure only these (a partial run writes no files unless --json)")
    ap.add_argument("--json", type=Path, default=None, help="write the results JSON here instead")
    args = ap.parse_args(argv)
    before = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        res = run(args.quick, args.rounds or (1 if args.quick else 5), args.threads, args.tasks)
    finally:
        torch.set_num_threads(before)
    for k, v in res["ratios"].items():
        print(f"{k}: ours {res['median_seconds'][k]['ours']:.3f}s, GPT-2 {res['median_seconds'][k]['hf']:.3f}s, "
              f"ours {v:.2f}x faster (goal {GOALS[k]}x)")
    if args.json is not None:
        import json

        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    elif not args.quick and not args.tasks:
        cmd = (f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')} python -m bench.vs_transformers --threads "
               f"{args.threads}" + (f" --rounds {args.rounds}" if args.rounds else ""))
        write_results("vs_transformers", res, markdown(res, cmd))
    return res


if __name__ == "__main__":
    main()

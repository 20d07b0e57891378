"""Step 4 of bench/gpu_check.sh: bf16 training throughput of the Transformer prior at a realistic size, with MFU.

Model: ``arch="transformer"``, vocabulary 1024, a 32 x 32 token grid (1024 tokens), 8 layers, 8 heads, d_model 512,
dropout 0; batch 32 of random tokens (32,768 tokens per step). One step is ``bench/prior_throughput.py``'s
``Runner``: ``PriorLossWrapper(prior)`` forward (= ``prior.loss``) under bf16 autocast, backward, AdamW. Modes:

* ``eager`` and ``compiled`` (``torch.compile`` of the wrapper; its first step, compilation included, is reported
  on its own): 3 untimed steps, then ``--rounds`` rounds of ``--steps-per-round`` steps, median round; compiled runs
  last, and only with ``COMPILE_MIN_SECONDS`` of the step's budget left;
* ``loop``: the product's training loop (``pipelines.training.loop.train`` with ``PriorTask``, Accelerate,
  ``mixed_precision="bf16"``, eager), its own logged tokens/s over the last ``log_every`` steps.

MFU = achieved FLOP/s / peak, FLOPs per token = 6 N + 12 n_layer d_model L (Chowdhery et al. 2022, PaLM, appendix B:
6N for the matmul weights forward + backward, plus the attention scores and values, counted in full although a
causal kernel skips half), with N the ``nn.Linear`` weights (the QKV, output, MLP and head matrices; embedding
lookups are no matmuls). Two peaks: the bf16 matmul rate step 1 measured on this GPU, and the datasheet's dense bf16
peak (989 TFLOP/s for the H100 / H200 SXM).

Dry run: 2 layers, d 64, 8 x 8 grid, vocabulary 64, batch 4, fp32 on the CPU, eager and loop only.
"""

from __future__ import annotations

import copy
import csv
import statistics
import tempfile
from pathlib import Path

from bench.gpu import stepkit

MODEL = dict(arch="transformer", vocab_size=1024, shape=(32, 32), n_layer=8, n_head=8, d_model=512, dropout=0.0)
BATCH = 32
DRY_MODEL = dict(arch="transformer", vocab_size=64, shape=(8, 8), n_layer=2, n_head=2, d_model=64, dropout=0.0)
DRY_BATCH = 4
COMPILE_MIN_SECONDS = 45  # start compiling only with this much budget left (8 layers fwd + bwd, cold caches)


def flops_per_token(prior) -> dict[str, float]:  # noqa: ANN001
    """{"matmul_params", "flops_per_token" (PaLM), "flops_per_token_causal" (attention halved)}."""
    from torch import nn

    n = sum(m.weight.numel() for m in prior.modules() if isinstance(m, nn.Linear))
    c = prior.config
    attn = 12 * c.n_layer * c.d_model * c.seq_len
    return {"matmul_params": n, "flops_per_token": 6 * n + attn, "flops_per_token_causal": 6 * n + attn / 2}


def loop_tokens_per_s(prior, tokens, batch: int, device: str, steps: int) -> float:  # noqa: ANN001
    """tokens/s the product's training loop logs over its last ``log_every`` steps (bf16 on CUDA)."""
    import torch

    from pipelines.training.loop import TrainConfig, train
    from pipelines.training.tasks import PriorTask, TokenGridDataset

    with tempfile.TemporaryDirectory() as tmp:
        log_every = max(1, steps // 4)
        cfg = TrainConfig(out=tmp, steps=steps, batch_size=batch, lr=3e-4, log_every=log_every, eval_every=10**9,
                          save_every=10**9, progress=False, device=device,
                          mixed_precision="bf16" if device == "cuda" else "no")
        data = TokenGridDataset(tokens.cpu(), torch.full((len(tokens),), -1, dtype=torch.long))
        res = train(PriorTask(prior, "random tokens", prior.config.seq_len), data, None, cfg)
        if res.status != "finished":
            raise RuntimeError(f"the training loop stopped early: {res.status} at step {res.step}")
        with (Path(tmp) / "train_log.csv").open() as f:
            rates = [float(r["value"]) for r in csv.DictReader(f) if r["key"] == "train/units_per_s"]
    if not rates:
        raise RuntimeError("the training loop logged no train/units_per_s")
    return rates[-1]


def main() -> None:
    args = stepkit.parse_args(__doc__, lambda ap: (
        ap.add_argument("--rounds", type=int, default=3),
        ap.add_argument("--steps-per-round", type=int, default=None, help="default 10 (dry run 2)"),
        ap.add_argument("--modes", nargs="*", default=None, help="default: eager compiled loop (dry run: eager loop)")))
    with stepkit.Record("train_mfu", args) as rec:
        import torch

        from bench.prior_throughput import Runner
        from pipelines.training.tasks import PriorLossWrapper
        from prior import build_prior

        device = stepkit.device_for(args)
        model, batch = (DRY_MODEL, DRY_BATCH) if args.dry_run else (MODEL, BATCH)
        modes = args.modes or (["eager", "loop"] if args.dry_run else ["eager", "compiled", "loop"])
        per_round = args.steps_per_round or (2 if args.dry_run else 10)
        torch.manual_seed(0)
        base = build_prior(**model).to(device).train()
        fl = flops_per_token(base)
        env = stepkit.read_step(args.results, "environment")
        peaks = {"measured": env.get("peak_tflops_measured"), "datasheet": env.get("peak_tflops_datasheet")}
        tokens = torch.randint(0, base.config.vocab_size, (batch, *base.config.shape), device=device)
        tok_per_step = batch * base.config.seq_len
        rec.data |= {"machine": stepkit.machine(device), "model": {**model, "shape": list(model["shape"])},
                     "batch": batch, "tokens_per_step": tok_per_step, "autocast": "bf16" if device == "cuda" else None,
                     "n_params": sum(p.numel() for p in base.parameters()), **fl, "peak_tflops": peaks}

        def finish(row: dict) -> dict:
            row["achieved_tflops"] = row["tokens_per_s"] * fl["flops_per_token"] / 1e12
            for k, peak in peaks.items():
                if peak:
                    row[f"mfu_vs_{k}"] = row["achieved_tflops"] / peak
            return row

        def timed_mode(mode: str) -> None:
            """eager / compiled: the first step (compiled: with compilation), 2 untimed, then the timed rounds."""
            r = Runner(PriorLossWrapper(copy.deepcopy(base)), torch.device(device), tokens, compiled=mode == "compiled")
            first = r.timed(1)
            r.timed(2)
            rr = [per_round * tok_per_step / r.timed(per_round) for _ in range(args.rounds)]
            row = finish({"mode": mode, "tokens_per_s": statistics.median(rr), "round_tokens_per_s": rr,
                          "first_step_s": round(first, 2), "steps": 3 + per_round * args.rounds})
            row["step_ms"] = 1e3 * tok_per_step / row["tokens_per_s"]
            rec.row(row)
            print(f"{mode:9s} {row['tokens_per_s']:12,.0f} tokens/s  {row['achieved_tflops']:7.1f} TFLOP/s  "
                  f"MFU {100 * row.get('mfu_vs_measured', 0):5.1f}% of the measured peak  (first step "
                  f"{row['first_step_s']:.1f} s)", flush=True)

        # eager, then the product's loop, then (time allowing) compiled: the GPU is not shared, so the modes need
        # not alternate as they do on the loaded CPU in bench/prior_throughput.py
        for mode in [m for m in ("eager", "loop", "compiled") if m in modes]:
            need = COMPILE_MIN_SECONDS if mode == "compiled" else 5
            if rec.time_left() < need:
                rec.row({"mode": mode, "skipped": f"budget: {rec.time_left():.0f} s left < {need} s"})
                continue
            try:
                if mode == "loop":
                    steps = 8 if args.dry_run else 40
                    tps = loop_tokens_per_s(copy.deepcopy(base), tokens, batch, device, steps)
                    row = finish({"mode": "loop", "tokens_per_s": tps, "steps": steps})
                    rec.row(row)
                    print(f"loop      {tps:12,.0f} tokens/s  {row['achieved_tflops']:7.1f} TFLOP/s", flush=True)
                else:
                    timed_mode(mode)
            except Exception as e:  # noqa: BLE001 - e.g. no C compiler for inductor: report, keep the other modes
                rec.row({"mode": mode, "error": stepkit.first_line(e)})
                print(f"{mode}: {stepkit.first_line(e)}", flush=True)
            if device == "cuda":
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()

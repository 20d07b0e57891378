"""Training throughput (tokens/s) of the Transformer prior, eager vs ``torch.compile``, in the same run.

One training step is what ``pipelines`` runs: ``PriorLossWrapper(prior)`` forward (= ``prior.loss``),
backward, ``AdamW.step``; batch 16 of uniformly random tokens. The model is a fixed size:
``arch="transformer", vocab_size=1000, shape=(16, 16)`` (256 tokens per grid), ``n_layer=4, n_head=4,
d_model=256``, dropout 0. Eager and compiled start from the same weights. Each mode is warmed up first
(the compiled mode's first step, which includes compilation, is timed and reported on its own), then the
timed steps are split into rounds that alternate eager / compiled so that load from other processes hits
both modes alike; the table gives the median round.

On CUDA the step runs under bf16 autocast and the table adds MFU = achieved FLOP/s / device peak, with
FLOPs per token = 6 * n_params + 12 * n_layer * d_model * seq_len (Chowdhery et al. 2022, PaLM,
appendix B: 6N for the parameter matmuls forward + backward, plus the attention score/value matmuls).
n_params counts every parameter, embedding tables included, so MFU is slightly overestimated.

Run: ``OMP_NUM_THREADS=2 python -m bench.prior_throughput`` (writes bench/results/prior_throughput.json
and docs/benchmarks/prior_throughput.md); ``--quick`` runs 2 timed steps per mode and only prints.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import platform
import statistics
import time
import traceback

import torch

from bench.common import cpu_model, write_results
from pipelines.training.tasks import PriorLossWrapper
from prior import build_prior

MODEL = dict(arch="transformer", vocab_size=1000, shape=(16, 16), n_layer=4, n_head=4, d_model=256)
# Dense bf16 tensor-core peaks in TFLOP/s (vendor datasheets; H200 has the H100 SXM's compute)
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}




def machine(device: torch.device) -> dict:
    info = {"cpu_model": cpu_model(), "cpu_count": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "python": platform.python_version(),
            "platform": platform.platform(), "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Runner:
    """One model + AdamW; ``step()`` does one training step and returns the loss (float)."""

    def __init__(self, wrapper: torch.nn.Module, device: torch.device, tokens: torch.Tensor, compiled: bool):
        self.wrapper, self.device, self.tokens = wrapper, device, tokens
        self.opt = torch.optim.AdamW(wrapper.parameters(), lr=3e-4)
        self.fn = torch.compile(wrapper) if compiled else wrapper

    def step(self) -> float:
        autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda"
                    else contextlib.nullcontext())
        with autocast:
            loss = self.fn(self.tokens)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss.detach()

    def timed(self, n: int) -> float:
        """Seconds for n steps (device synchronised before and after)."""
        sync(self.device)
        t0 = time.perf_counter()
        for _ in range(n):
            loss = self.step()
        sync(self.device)
        dt = time.perf_counter() - t0
        if not torch.isfinite(loss):
            raise RuntimeError(f"non-finite loss {loss.item()}")
        return dt


def main() -> None:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=24, help="timed steps per mode (split into --rounds)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating eager/compiled timing rounds")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per mode after the first")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU (default: table)")
    ap.add_argument("--quick", action="store_true", help="2 timed steps per mode, 1 round; print only")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.rounds, args.warmup = 2, 1, 1
    if args.steps < args.rounds or args.rounds < 1:
        raise ValueError(f"--steps ({args.steps}) must be >= --rounds ({args.rounds}) >= 1")

    device = torch.device(args.device)
    load_start = os.getloadavg()
    torch.manual_seed(0)
    base = build_prior(**MODEL).to(device).train()
    cfg = base.config
    seq_len = cfg.seq_len
    n_params = sum(p.numel() for p in base.parameters())
    flops_per_token = 6 * n_params + 12 * cfg.n_layer * cfg.d_model * seq_len
    tokens = torch.randint(0, cfg.vocab_size, (args.batch, *cfg.shape), device=device)
    tok_per_step = args.batch * seq_len
    peak = peak_tflops(device, args.peak_tflops)

    runners: dict[str, Runner] = {}
    results: dict[str, dict] = {}
    for mode in ("eager", "compiled"):
        res: dict = {"mode": mode, "round_tokens_per_s": []}
        results[mode] = res
        try:
            torch._dynamo.reset()
            r = Runner(PriorLossWrapper(copy.deepcopy(base)), device, tokens, compiled=mode == "compiled")
            sync(device)
            t0 = time.perf_counter()
            r.step()  # compiled: dynamo trace + inductor codegen of forward and backward
            sync(device)
            res["first_step_s"] = time.perf_counter() - t0
            r.timed(args.warmup)
            if mode == "compiled":
                with contextlib.suppress(Exception):
                    from torch._dynamo.utils import counters
                    res["graph_breaks"] = sum(counters["graph_break"].values())
            runners[mode] = r
        except Exception as e:  # noqa: BLE001 - report (e.g. no C++ toolchain for inductor) instead of crashing
            res["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:300]
            traceback.print_exc()

    per_round = [args.steps // args.rounds + (i < args.steps % args.rounds) for i in range(args.rounds)]
    for n in per_round:  # alternate so both modes see the same background load
        for mode, r in runners.items():
            try:
                results[mode]["round_tokens_per_s"].append(n * tok_per_step / r.timed(n))
            except Exception as e:  # noqa: BLE001
                results[mode]["error"] = f"{type(e).__name__}: {e}"[:300]
                runners.pop(mode)
                break

    for res in results.values():
        rounds = res["round_tokens_per_s"]
        if rounds and "error" not in res:
            res["tokens_per_s"] = statistics.median(rounds)
            res["step_ms"] = 1000 * tok_per_step / res["tokens_per_s"]
            res["achieved_tflops"] = res["tokens_per_s"] * flops_per_token / 1e12
            if peak:
                res["mfu"] = res["achieved_tflops"] / peak
    eager, comp = results["eager"].get("tokens_per_s"), results["compiled"].get("tokens_per_s")
    ratio = comp / eager if eager and comp else None

    # ------------------------------------------------------------------ table
    head = f"| mode | tokens/s (median of {args.rounds}) | min-max | ms/step | first step s | TFLOP/s | MFU |"
    lines = [head, "|" + "---|" * 7]
    for mode, res in results.items():
        if "error" in res:
            lines.append(f"| {mode} | failed: {res['error']} | | | | | |")
            continue
        rr = res["round_tokens_per_s"]
        mfu = f"{100 * res['mfu']:.2f}%" if "mfu" in res else "n/a"
        lines.append(f"| {mode} | {res['tokens_per_s']:,.0f} | {min(rr):,.0f}-{max(rr):,.0f} | "
                     f"{res['step_ms']:.1f} | {res['first_step_s']:.1f} | {res['achieved_tflops']:.3f} | {mfu} |")
    lines.append(f"| compiled / eager | {ratio:.2f}x | | | | | |" if ratio else "| compiled / eager | n/a | | | | | |")
    table = "\n".join(lines)
    print(f"model: {MODEL}, n_params={n_params:,}, seq_len={seq_len}, batch={args.batch}, "
          f"{tok_per_step} tokens/step, {flops_per_token / 1e6:.1f} MFLOP/token; device={device}, "
          f"threads={torch.get_num_threads()}")
    print(table)
    if args.quick:
        return

    info = machine(device)
    out = {"model": {**MODEL, "shape": list(MODEL["shape"]), "n_params": n_params, "seq_len": seq_len},
           "batch": args.batch, "tokens_per_step": tok_per_step, "steps": args.steps, "rounds": args.rounds,
           "warmup": args.warmup, "autocast": "bf16" if device.type == "cuda" else None,
           "flops_per_token": flops_per_token, "peak_tflops": peak, "results": results,
           "compiled_over_eager": ratio, "machine": info,
           "load_average": {"start": [round(v, 2) for v in load_start], "end": [round(v, 2) for v in os.getloadavg()]}}
    hw = info.get("gpu") or f"{info['cpu_model']}, {info['cpus_usable']} usable cores"
    cmd = (f"OMP_NUM_THREADS={info['OMP_NUM_THREADS']} " if info["OMP_NUM_THREADS"] else "") + \
        f"python -m bench.prior_throughput --steps {args.steps} --rounds {args.rounds} --warmup {args.warmup}"
    md = [
        "## Prior training throughput: eager vs torch.compile", "",
        f"`{cmd}` on {hw} ({device}, torch {info['torch']}, {info['torch_threads']} threads).", "",
        f"Transformer prior `{MODEL}` ({n_params:,} parameters, {seq_len} tokens per grid), dropout 0; one step "
        f"= `PriorLossWrapper(prior)` forward (`prior.loss`) + backward + AdamW, batch {args.batch} of random "
        f"tokens ({tok_per_step} tokens/step)" + (", bf16 autocast" if device.type == "cuda" else ", fp32") + ".",
        "", table, "",
        "Notes:",
        f"- {args.steps} timed steps per mode after {args.warmup + 1} warm-up steps, in {args.rounds} rounds "
        "alternating eager/compiled; tokens/s is the median round, min-max the spread across rounds.",
        "- \"first step\" is the first training step's wall time; for `compiled` it is dominated by "
        "dynamo tracing + inductor compilation of forward and backward (shorter when inductor's on-disk cache "
        "already holds kernels from an earlier run on this machine).",
        f"- TFLOP/s uses {flops_per_token / 1e6:.1f} MFLOP/token = 6 * n_params + 12 * n_layer * d_model * "
        "seq_len (PaLM, appendix B), embeddings included; MFU needs a known peak (GPU table or `--peak-tflops`), "
        "so it is n/a on CPU.",
    ]
    if "graph_breaks" in results["compiled"]:
        breaks = results["compiled"]["graph_breaks"]
        md.append(f"- dynamo graph breaks: {breaks}" + (" (the loss is compiled as one graph)." if not breaks else
                  ", so the loss is compiled as more than one graph (see tests/pipelines/test_no_graph_breaks.py)."))
    if device.type == "cpu":
        la = out["load_average"]
        md.append(f"- 1-minute load average {la['start'][0]} at the start and {la['end'][0]} at the end on "
                  f"{info['cpus_usable']} usable cores: other processes share the CPU when it exceeds the threads "
                  "used here, so check the min-max spread; alternating rounds make the ratio fairer, not exact.")
    write_results("prior_throughput", out, "\n".join(md))


if __name__ == "__main__":
    main()

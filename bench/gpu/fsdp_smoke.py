"""Step 6 of bench/gpu_check.sh: a 1-GPU FSDP smoke run of the prior training command, as the README shows it.

1. ``vqgen tokenize --raw --levels 2 --dataset shapes --image-size 8 --channels 1 --limit 256`` (in-process, through
   ``pipelines.cli.main``): 8 x 8 binarised procedural shapes, vocabulary 2, no download.
2. ``accelerate launch --config_file scripts/configs/fsdp.yaml --num_processes 1 scripts/train_prior.py --tokens ...
   --arch transformer --steps 20 --eval-every 10 --save-every 10 --mixed-precision bf16`` (a 2-layer, d 64 prior):
   the world it reports must be FSDP on cuda; evaluation at steps 10 and 20, a checkpoint at 10, the final save.
3. The same command with ``--steps 30 --resume``: it must resume from step 20's checkpoint and finish at 30.
4. ``load_prior(out)`` in this process: the folder loads, its held-out NLL (fp32) matches the NLL the run recorded
   (bf16 autocast) within 3%, and ``sample(4)`` gives [4, 8, 8] tokens in [0, 2).

Dry run: Accelerate cannot shard on the CPU (the training command refuses an FSDP launch there), so the same training
script runs in one plain process (no launcher), with 6 and 9 steps; the rest is unchanged.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.gpu import stepkit

ROOT = stepkit.ROOT


def launcher(device: str) -> list[str]:
    """The launch command before the script: Accelerate with the FSDP config on CUDA, plain python on the CPU."""
    if device == "cuda":
        return [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                str(ROOT / "scripts" / "configs" / "fsdp.yaml"), "--num_processes", "1"]
    return [sys.executable]


def launch(device: str, tokens: Path, out: Path, steps: int, every: int, resume: bool, timeout: float,
           log: Path) -> str:
    """Run the training launch (module docstring) and return its output; ``RuntimeError`` with the output's tail on
    a non-zero exit."""
    cmd = [*launcher(device), str(ROOT / "scripts" / "train_prior.py"), "--tokens", str(tokens), "--arch", "transformer", "--out",
           str(out), "--steps", str(steps), "--batch-size", "16", "--eval-every", str(every), "--save-every",
           str(every), "--n-layer", "2", "--n-head", "2", "--d-model", "64", "--mixed-precision", "bf16", "--quiet"]
    if resume:
        cmd.append("--resume")
    print("$ " + " ".join(cmd), flush=True)
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=max(5.0, timeout), cwd=ROOT)
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"the launch did not finish in {timeout:.0f} s") from e
    text = r.stdout + r.stderr
    with log.open("a") as f:
        f.write("$ " + " ".join(cmd) + "\n" + text + "\n")
    print(text[-3000:], flush=True)
    if r.returncode != 0:
        raise RuntimeError(f"exit status {r.returncode}: " + " | ".join(text.strip().splitlines()[-6:])[-600:])
    return text


def world(text: str) -> str:
    """The 'training with ...' line the training loop prints, e.g. '1 process, FSDP, nccl, on cuda:0'."""
    m = re.search(r"training with (.+)", text)
    return m.group(1).strip() if m else ""


def check_world(w: str, device: str) -> None:
    if device == "cuda" and "FSDP" not in w:
        raise RuntimeError(f"the launch trained with '{w}', not FSDP: Accelerate did not apply "
                           "scripts/configs/fsdp.yaml")


def main() -> None:
    args = stepkit.parse_args(__doc__)
    with stepkit.Record("fsdp", args) as rec:
        import torch

        from pipelines.cli import main as cli
        from prior import load_prior

        device = stepkit.device_for(args)
        rec.data["machine"] = stepkit.machine(device)
        rec.data["launcher"] = " ".join(["python", *launcher(device)[1:]]).replace(str(ROOT) + "/", "")
        steps, every = (6, 3) if args.dry_run else (20, 10)
        work = Path(tempfile.mkdtemp(prefix="gpu_check_fsdp_"))
        log = Path(args.results) / "fsdp_launch.log"
        log.write_text("")
        tokens, out = work / "tokens", work / "prior"
        t = time.monotonic()
        rc = cli(["tokenize", "--raw", "--levels", "2", "--dataset", "shapes", "--image-size", "8", "--channels", "1",
                  "--limit", "256", "--out", str(tokens), "--quiet"])
        if rc != 0:
            raise RuntimeError(f"vqgen tokenize exited with {rc}")
        rec.row({"stage": "tokenize", "seconds": round(time.monotonic() - t, 1)})

        t = time.monotonic()
        text = launch(device, tokens, out, steps, every, False, rec.time_left() - 10, log)
        w = world(text)
        check_world(w, device)
        metrics = json.loads((out / "metrics.json").read_text())
        ckpts = sorted(p.name for p in (out / "checkpoints").iterdir()) if (out / "checkpoints").is_dir() else []
        missing = [f for f in ("config.json", "model.safetensors", "metrics.json", "README.md") if not (out / f).is_file()]
        if missing or metrics.get("step") != steps or not math.isfinite(metrics.get("nll_nats", math.nan)):
            raise RuntimeError(f"the run's folder is incomplete: missing {missing}, metrics {metrics}")
        rec.row({"stage": "train", "world": w, "seconds": round(time.monotonic() - t, 1), "metrics": metrics,
                 "checkpoints": ckpts})

        if rec.time_left() > 25:
            t = time.monotonic()
            text = launch(device, tokens, out, steps + every, every, True, rec.time_left() - 10, log)
            m2 = json.loads((out / "metrics.json").read_text())
            if f"at step {steps}" not in text or "resumed from" not in text or m2.get("step") != steps + every:
                raise RuntimeError(f"--resume did not continue from step {steps} to {steps + every}: metrics {m2}")
            metrics = m2
            rec.row({"stage": "resume", "world": world(text), "seconds": round(time.monotonic() - t, 1),
                     "metrics": m2})
        else:
            rec.row({"stage": "resume", "skipped": f"budget: {rec.time_left():.0f} s left"})

        t = time.monotonic()
        prior = load_prior(str(out)).to(device)
        from pipelines.data.tokens import load_tokens

        te, _ = load_tokens(tokens, "test")
        with torch.no_grad():
            nll = -prior.log_prob(te.long().to(device)).double().mean().item()
        g = torch.Generator(device=device).manual_seed(0)
        x = prior.sample(4, generator=g)
        ok_shape = tuple(x.shape) == (4, 8, 8) and int(x.min()) >= 0 and int(x.max()) < 2
        rel = abs(nll - metrics["nll_nats"]) / metrics["nll_nats"]
        rec.row({"stage": "load+sample", "seconds": round(time.monotonic() - t, 1), "nll_nats_loaded": nll,
                 "nll_nats_recorded": metrics["nll_nats"], "relative_difference": rel,
                 "sample_shape": list(x.shape)})
        if not ok_shape or rel > 0.03:
            raise RuntimeError(f"the saved prior does not match its run: NLL {nll:.4f} loaded vs "
                               f"{metrics['nll_nats']:.4f} recorded, samples {tuple(x.shape)} in "
                               f"[{int(x.min())}, {int(x.max())}]")
        print(f"FSDP run ({w}): NLL recorded {metrics['nll_nats']:.3f}, loaded {nll:.3f}; samples {tuple(x.shape)}")


if __name__ == "__main__":
    main()

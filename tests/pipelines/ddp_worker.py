"""The multi-process runs that test_distributed.py compares with one process.

Launched under torchrun (2 gloo CPU processes: ``python -m torch.distributed.run --nproc_per_node=2 ddp_worker.py
OUT``), every process runs every case in ``CASES`` in order; test_distributed.py imports this file and runs the same
cases in one process for the reference. Each case writes OUT/<case>/rank{R}.safetensors (the process's final model
state, codebook buffers included) and OUT/<case>/rank{R}.json (what ``train`` returned, plus the test split scored
on this process alone, unsharded).

The global batch is fixed (``GLOBAL_BATCH``); each process takes ``GLOBAL_BATCH / world``. With N processes
Accelerate's seedable sampler deals the batches of one shared permutation round-robin, so the N batches of a step
are exactly the single process's batch of N times the size (the splits here are multiples of the global batch).
Nothing random differs between the layouts: no dropout, no label dropout, no k-means initialisation or dead-code
replacement in the compared cases (those draw from each process's RNG, so N processes cannot repeat 1 process's
draws; ``rvq_kmeans`` checks only that the processes agree with each other).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from pipelines.training.config import TrainConfig, TrainResult
from pipelines.training.loop import train
from pipelines.training.task import TrainTask
from pipelines.training.tasks import PriorTask, TokenGridDataset, TokenizerTask
from prior import build_prior
from tokenizers_vq import build_tokenizer

GLOBAL_BATCH = 8
EVAL_BATCH = 4  # 9 test examples: shards of 4 and 5, so rank 0 runs one padding forward (EvalShard)
N_TEST = 9


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _cfg(out: Path, steps: int, **kw) -> TrainConfig:
    base = dict(out=str(out), steps=steps, batch_size=GLOBAL_BATCH // world(), lr=1e-2, eval_every=3, save_every=2,
                eval_batch_size=EVAL_BATCH, log_every=2, progress=False, seed=1)
    return TrainConfig(**{**base, **kw})


def _record(out: Path, task: TrainTask, test_set, res: TrainResult, name: str = "") -> None:
    """This process's final state and result; ``metrics_local``: the test split scored here alone, unsharded."""
    model = task.model
    was = model.training
    model.eval()
    with torch.no_grad():
        local = task.evaluate(model, test_set, EVAL_BATCH)
    model.train(was)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().clone() for k, v in model.state_dict().items()},
              str(out / f"rank{rank()}{name}.safetensors"))
    (out / f"rank{rank()}{name}.json").write_text(json.dumps(
        {"status": res.status, "step": res.step, "metrics": res.metrics, "metrics_local": local,
         "checkpoint": res.checkpoint}, indent=1))


# ---------------------------------------------------------------------------- priors
def prior_data() -> tuple[TokenGridDataset, TokenGridDataset]:
    """64 training grids (a learnable rule: each row repeats its first token) with labels, 9 test grids."""
    g = torch.Generator().manual_seed(0)
    first = torch.randint(0, 4, (64 + N_TEST, 2, 1), generator=g)
    tokens, labels = first.expand(-1, 2, 3).contiguous(), torch.randint(0, 2, (64 + N_TEST,), generator=g)
    return TokenGridDataset(tokens[:64], labels[:64]), TokenGridDataset(tokens[64:], labels[64:])


class SignalAt(PriorTask):
    """A prior task whose process sends itself a real SIGTERM (as a cluster scheduler would) after optimizer step
    ``at``, on the ranks in ``ranks`` only."""

    def __init__(self, at: int, ranks: tuple[int, ...], **kw):
        super().__init__(**kw)
        self.at, self.ranks = at, ranks

    def on_step(self, step: int) -> None:
        if step == self.at and rank() in self.ranks:
            os.kill(os.getpid(), signal.SIGTERM)


def _prior_task(at: int | None = None, ranks: tuple[int, ...] = ()) -> PriorTask:
    torch.manual_seed(0)  # the same initial weights in every process and layout
    prior = build_prior(arch="lstm", vocab_size=4, shape=(2, 3), lstm_hidden=16, lstm_layers=1, num_classes=2,
                        label_dropout=0.0)
    kw = dict(prior=prior, tokens_dir="toy", dims_per_input=6)
    return SignalAt(at, ranks, **kw) if at is not None else PriorTask(**kw)


def prior_full(out: Path) -> None:
    """6 steps, evaluated at steps 3 and 6, checkpoints at 2 and 4, the final folder."""
    tr, te = prior_data()
    task = _prior_task()
    _record(out, task, te, train(task, tr, te, _cfg(out, 6)))


def prior_sigterm_one(out: Path) -> None:
    """SIGTERM on rank 1 only after step 3: every process stops after step 3 with a checkpoint; then the same
    command with resume continues to step 6."""
    tr, te = prior_data()
    task = _prior_task(at=3, ranks=(1,))
    _record(out, task, te, train(task, tr, te, _cfg(out, 6)), "_stopped")
    task = _prior_task()
    _record(out, task, te, train(task, tr, te, _cfg(out, 6, resume=True)))


def prior_sigterm_all(out: Path) -> None:
    """SIGTERM on every process after step 2 (a node drained): a checkpoint at 2, no final folder."""
    tr, te = prior_data()
    task = _prior_task(at=2, ranks=tuple(range(world())))
    _record(out, task, te, train(task, tr, te, _cfg(out, 6)))


# ---------------------------------------------------------------------------- VQ tokenizers
def image_data() -> tuple[torch.utils.data.TensorDataset, torch.utils.data.TensorDataset]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(32 + N_TEST, 1, 8, 8, generator=g)
    y = torch.zeros(32 + N_TEST, dtype=torch.long)
    return torch.utils.data.TensorDataset(x[:32], y[:32]), torch.utils.data.TensorDataset(x[32:], y[32:])


def _vq_task(**kw) -> TokenizerTask:
    torch.manual_seed(0)
    tok = build_tokenizer(modality="image", image_size=8, hidden_channels=8, latent_dim=8, num_res_blocks=1,
                          codebook_size=16, **kw)
    return TokenizerTask(tok, "toy")


def switch_off_codebook_sync(task: TokenizerTask) -> None:
    """Make every codebook update from this process's batches only (what the cached ``is_distributed`` did)."""
    from vector_quantize_pytorch.vector_quantize_pytorch import Codebook, noop

    codebooks = [m for m in task.model.modules() if isinstance(m, Codebook)]
    assert codebooks, "no vector-quantize-pytorch codebook in this tokenizer"
    for m in codebooks:
        m.all_reduce_fn = noop


def _vq_run(out: Path, sync: bool) -> None:
    tr, te = image_data()
    # No k-means initialisation and no dead-code replacement: both sample vectors at random (per process).
    task = _vq_task(quantizer="vq", kmeans_init=False, dead_code_threshold=0.0)
    if not sync:
        switch_off_codebook_sync(task)
    _record(out, task, te, train(task, tr, te, _cfg(out, 4, eval_every=4)))


def vq_sync(out: Path) -> None:
    """EMA codebook statistics all-reduced across processes (the quantizer's own sync)."""
    _vq_run(out, sync=True)


def vq_nosync(out: Path) -> None:
    """The same run with the codebook sync switched off: must not match one process."""
    _vq_run(out, sync=False)


def rvq_kmeans(out: Path) -> None:
    """Residual VQ with k-means initialisation, dead-code replacement and quantizer dropout (each layer's k-means
    samples, dead-code samples and the dropout count are drawn once and shared): the processes must agree."""
    tr, te = image_data()
    task = _vq_task(quantizer="rvq", num_quantizers=2)
    _record(out, task, te, train(task, tr, te, _cfg(out, 4, eval_every=4)))


def fsdp_eval(out: Path) -> None:
    """FSDP2 (torch's fully_shard, here on gloo CPU; Accelerate will not shard on CPU) with the loop's evaluation and
    final-save pieces: every process scores its share through the sharded model's forward (uneven shards: without
    equal forward counts this hangs), and the gathered full state dict rebuilds an unsharded copy (what train()
    saves under FSDP). Both must score the test split as the unsharded model did. Needs the process group that the
    earlier cases' Accelerator started (it outlives train())."""
    if world() == 1:
        return
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import fully_shard

    from pipelines.training.evaluation import EvalShard
    from prior.transformer import Block

    _, te = prior_data()
    torch.manual_seed(0)
    task = PriorTask(build_prior(arch="transformer", vocab_size=4, shape=(2, 3), num_classes=2, n_layer=2, n_head=2,
                                 d_model=16), "toy", 6)
    task.model.eval()
    with torch.no_grad():
        reference = task.evaluate(task.model, te, EVAL_BATCH)
    for m in task.model.modules():
        if isinstance(m, Block):
            fully_shard(m)
    fully_shard(task.model)
    shard = EvalShard(rank(), world(), lambda t: (dist.all_reduce(t), t)[1])
    with torch.no_grad():
        sharded = task.evaluate(task.model, te, EVAL_BATCH, shard=shard)
    full = get_model_state_dict(task.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    copy = {}
    if rank() == 0:
        with torch.no_grad():
            copy = task.evaluate(task.unsharded_copy(full).eval(), te, EVAL_BATCH)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{rank()}.json").write_text(json.dumps({"reference": reference, "sharded": sharded, "copy": copy}))


def adversarial(out: Path) -> None:
    """A resnet tokenizer against a PatchGAN discriminator (fixed adversarial weight: the adaptive one is measured
    on each process's own gradients, as in VQGAN under DDP): both networks' gradients are all-reduced."""
    from tokenizers_vq.discriminator import DiscriminatorConfig

    g = torch.Generator().manual_seed(0)
    x = torch.rand(32 + N_TEST, 3, 16, 16, generator=g)
    y = torch.zeros(32 + N_TEST, dtype=torch.long)
    tr, te = torch.utils.data.TensorDataset(x[:32], y[:32]), torch.utils.data.TensorDataset(x[32:], y[32:])
    torch.manual_seed(0)
    tok = build_tokenizer(modality="image", autoencoder="resnet", channels=3, image_size=16, hidden_channels=4,
                          latent_dim=4, quantizer="fsq", fsq_levels=[5, 5])
    adv = DiscriminatorConfig(disc_weight=0.5, disc_start=1, disc_channels=4, disc_layers=2, disc_adaptive=False,
                              feature_match_weight=0.5)
    task = TokenizerTask(tok, "toy", adversarial=adv)
    _record(out, task, te, train(task, tr, te, _cfg(out, 4, eval_every=4)))


# The VQ cases first: their tokenizer is built before this process's group exists, as the CLI builds it (the
# cached-is_distributed bug only showed for a quantizer built before the group started).
CASES = {f.__name__: f for f in (vq_sync, vq_nosync, rvq_kmeans, prior_full, prior_sigterm_one, prior_sigterm_all,
                                         adversarial, fsdp_eval)}


def main(out: str, names: list[str]) -> None:
    for name in names or list(CASES):
        CASES[name](Path(out) / name)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])

"""Multi-process training on CPU (torchrun, 2 gloo processes: the code path ``accelerate launch`` takes on GPUs)
against one process with the same global batch: training, evaluation, the final save, SIGTERM, resume and the VQ
codebook sync (ddp_worker.py runs the cases). FSDP cannot run on CPU through Accelerate: a test pins the error.

Tolerances: a 2-process step averages two per-process mean gradients where one process takes one mean over the
same 8 examples, so the two differ by float summation order only (measured after 6 Adam steps: 6e-8 on the prior's
weights, 3.4e-7 on the tokenizer's, 1.5e-8 on the codebook); 1e-5 leaves 30x room and is still 10^4 times smaller
than what a codebook that is not synced moves (9e-2, also measured).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pipelines.training.config import TrainConfig
from pipelines.training.evaluation import EvalShard, forward_count, shard_ranges
from pipelines.training.loop import train
from pipelines.training.tasks import PriorTask, TokenGridDataset, evaluate_prior, evaluate_tokenizer
from prior import build_prior
from tests.launch_workers import launch_workers
from tokenizers_vq import build_tokenizer

WORKER = Path(__file__).with_name("ddp_worker.py")
_spec = importlib.util.spec_from_file_location("ddp_worker", WORKER)
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)  # type: ignore[union-attr]

ATOL = 1e-5
needs_dist = pytest.mark.skipif(not torch.distributed.is_available(), reason="this torch build has no torch.distributed")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from a second intra-op thread, and on a loaded 2-core machine its spin-waits made
    these in-process runs 40x slower (measured: an evaluation 0.4 s with 1 thread, 15.7 s with 2)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def launch(nproc: int, *args: str, timeout: float = 280) -> str:
    """Start ``nproc`` ddp_worker.py processes the way torchrun does (``tests/launch_workers.py``); their output."""
    return "".join(launch_workers([str(WORKER), *args], nproc, timeout, prefix="ddp-logs-"))


@pytest.fixture(scope="module")
def two(tmp_path_factory) -> Path:
    """Every worker case, run once by 2 processes (most of the time is two processes importing torch)."""
    out = tmp_path_factory.mktemp("two")
    launch(2, str(out))
    return out


@pytest.fixture(scope="module")
def one(tmp_path_factory) -> Path:
    """The 1-process references (global batch on one process), run in this process."""
    out = tmp_path_factory.mktemp("one")
    for name in ("prior_full", "vq_sync", "adversarial"):
        worker.CASES[name](out / name)
    return out


def _ranks(case_dir: Path, suffix: str = "") -> tuple[list[dict], list[dict]]:
    weights = [load_file(str(case_dir / f"rank{r}{suffix}.safetensors")) for r in (0, 1)]
    results = [json.loads((case_dir / f"rank{r}{suffix}.json").read_text()) for r in (0, 1)]
    return weights, results


def _close(a: dict, b: dict, atol: float = ATOL, keys=None) -> None:
    assert a.keys() == b.keys()
    for k in keys or a:
        torch.testing.assert_close(a[k].float(), b[k].float(), rtol=0, atol=atol, msg=k)


def _scores(result: dict) -> dict:
    """The evaluation metrics and step of a run's result (not its wall-clock time)."""
    return {k: v for k, v in result["metrics"].items() if k != "train_seconds"}


def _max_diff(a: dict, b: dict, keys) -> float:
    return max((a[k].float() - b[k].float()).abs().max().item() for k in keys)


@needs_dist
def test_two_processes_train_evaluate_and_save_like_one_process_with_the_same_global_batch(two, one):
    (w0, w1), (r0, r1) = _ranks(two / "prior_full")
    ref_w, ref = load_file(str(one / "prior_full" / "rank0.safetensors")), json.loads(
        (one / "prior_full" / "rank0.json").read_text())
    for k in w0:
        assert torch.equal(w0[k], w1[k]), f"the processes disagree on {k}"
    _close(w0, ref_w)
    # The final folder: written once, by the main process, holding the trained weights (the prior's, unprefixed).
    final = load_file(str(two / "prior_full" / "model.safetensors"))
    _close(w0, {f"prior.{k}": v for k, v in final.items()}, atol=0)
    assert r0["status"] == r1["status"] == "finished" and r0["step"] == r1["step"] == 6
    # Evaluation ran on both processes (shards of 4 and 5 of the 9 test grids) and every process got the totals:
    # the same numbers as scoring the whole split on one process, and as the 1-process run.
    assert _scores(r0) == _scores(r1)
    for k, v in r0["metrics_local"].items():
        assert r0["metrics"][k] == pytest.approx(v, rel=1e-12), k
        assert r0["metrics"][k] == pytest.approx(ref["metrics"][k], rel=1e-6), k
    saved = json.loads((two / "prior_full" / "metrics.json").read_text())
    assert saved["nll_nats"] == r0["metrics"]["nll_nats"] and saved["step"] == 6
    log = (two / "prior_full" / "train_log.csv").read_text().splitlines()
    assert sum(line.startswith(("3,eval/nll_nats", "6,eval/nll_nats")) for line in log) == 2  # evaluated at 3 and 6


@needs_dist
def test_sigterm_on_one_process_stops_both_with_a_checkpoint_and_resume_matches_an_uninterrupted_run(two, one):
    (s0, s1), (q0, q1) = _ranks(two / "prior_sigterm_one", "_stopped")
    # Rank 1 alone got SIGTERM after step 3; both stopped there, with the same checkpoint and the same weights.
    assert q0["status"] == q1["status"] == "preempted" and q0["step"] == q1["step"] == 3
    assert q0["checkpoint"] == q1["checkpoint"] and q0["checkpoint"].endswith("checkpoint-00000003")
    _close(s0, s1, atol=0)
    (w0, w1), (r0, r1) = _ranks(two / "prior_sigterm_one")
    assert r0["status"] == r1["status"] == "finished" and r0["step"] == 6
    full, _ = _ranks(two / "prior_full")
    _close(w0, full[0], atol=0)  # the same layout: resuming repeats the uninterrupted run exactly
    _close(w1, full[0], atol=0)
    _close(w0, load_file(str(one / "prior_full" / "rank0.safetensors")))
    assert _scores(r0) == pytest.approx(_scores(json.loads((two / "prior_full" / "rank0.json").read_text())))


@needs_dist
def test_sigterm_on_every_process_leaves_a_checkpoint_with_each_process_state(two):
    _, (r0, r1) = _ranks(two / "prior_sigterm_all")
    assert r0["status"] == r1["status"] == "preempted" and r0["step"] == r1["step"] == 2
    ckpt = two / "prior_sigterm_all" / "checkpoints" / "checkpoint-00000002"
    for f in ("COMPLETE", "model.safetensors", "optimizer.bin", "random_states_0.pkl", "random_states_1.pkl"):
        assert (ckpt / f).is_file(), f
    assert not (two / "prior_sigterm_all" / "model.safetensors").exists()  # stopped: no final folder


@needs_dist
def test_vq_codebooks_sync_like_one_process_and_not_without_the_sync(two, one):
    """The EMA codebook statistics are all-reduced: 2 processes x 4 images update the codebook as 1 process x 8.
    Before the fix nothing was all-reduced (vector-quantize-pytorch's cached is_distributed() answered False for a
    tokenizer built before the process group) and a broadcast from rank 0 hid it; with the sync switched off the
    same comparison fails."""
    ref = load_file(str(one / "vq_sync" / "rank0.safetensors"))
    codebook = [k for k in ref if "_codebook." in k]
    assert {"model.quantizer.vq._codebook.embed", "model.quantizer.vq._codebook.embed_avg",
            "model.quantizer.vq._codebook.cluster_size"} <= set(codebook)
    (w0, w1), (r0, r1) = _ranks(two / "vq_sync")
    _close(w0, w1, atol=0)
    _close(w0, ref)  # the codebook and every weight
    for k, v in r0["metrics_local"].items():
        assert r0["metrics"][k] == pytest.approx(v, rel=1e-9), k  # sharded evaluation == whole split, one process
    (n0, n1), _ = _ranks(two / "vq_nosync")
    assert _max_diff(n0, ref, codebook) > 1e-3 and _max_diff(n1, ref, codebook) > 1e-3
    assert _max_diff(n0, n1, codebook) > 1e-3  # and the processes drift apart


@needs_dist
def test_kmeans_init_dead_codes_and_quantizer_dropout_keep_processes_in_sync(two):
    (w0, w1), (r0, r1) = _ranks(two / "rvq_kmeans")
    assert any("layers.1._codebook.embed" in k for k in w0)
    assert bool(w0["model.quantizer.rq.layers.0._codebook.initted"])
    _close(w0, w1, atol=0)
    assert _scores(r0) == _scores(r1)


@needs_dist
def test_tokenizer_and_discriminator_stay_in_sync_like_one_process(two, one):
    """Adversarial training on 2 processes: both hold the same tokenizer and discriminator (bit for bit), and their
    weights equal one process's with the same global batch (the discriminator's gradients are all-reduced with the
    tokenizer's). Biases are left out of the second comparison: a convolution's bias that feeds a GroupNorm has a
    zero gradient in exact arithmetic, and Adam turns the float noise around that zero into full-size steps whose
    sign depends on summation order (the tokenizer's ResBlocks have such biases; the discriminator has none). Their
    drift reaches the weights through the forward (measured: biases up to 8e-3 apart after 4 steps, weights 3e-6
    to 1.1e-5), so weights are compared at 1e-4; a discriminator that was not synced moves by ~1e-2 (lr 1e-2)."""
    ref = load_file(str(one / "adversarial" / "rank0.safetensors"))
    assert any(k.startswith("discriminator.") for k in ref) and int(ref["step"]) == 4
    (w0, w1), (r0, r1) = _ranks(two / "adversarial")
    _close(w0, w1, atol=0)
    weights = [k for k in ref if not k.endswith(".bias")]
    assert any(k.startswith("discriminator.") for k in weights)
    assert _max_diff(w0, ref, weights) < 1e-4
    assert _scores(r0) == _scores(r1)


@needs_dist
def test_fsdp_sharded_evaluation_and_gathered_copy_score_like_the_unsharded_model(two):
    for r in (0, 1):
        res = json.loads((two / "fsdp_eval" / f"rank{r}.json").read_text())
        assert res["sharded"] == pytest.approx(res["reference"], rel=1e-6)
        if r == 0:
            assert res["copy"] == pytest.approx(res["reference"], rel=1e-6)


def test_fsdp_on_cpu_is_refused_with_a_clear_error(tmp_path, monkeypatch):
    """Accelerate runs FSDP on GPUs only; on CPU it silently trains with DDP (or, without a CPU flag, as unconnected
    single processes: both seen with this torch and Accelerate). So a launch that asks for FSDP on CPU stops at once."""
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch --config_file fsdp.yaml` sets
    data = worker.prior_data()[0]
    devices = ["cpu"] + ([None] if not torch.cuda.is_available() else [])
    for device in devices:
        with pytest.raises(ValueError, match=r"FSDP needs CUDA: .* silently trains with DDP instead.*torchrun"):
            train(PriorTask(build_prior(arch="lstm", vocab_size=4, shape=(2, 3), lstm_hidden=8), "toy", 6), data,
                  None, TrainConfig(out=str(tmp_path), steps=1, batch_size=8, progress=False, device=device))
    assert not (tmp_path / "checkpoints").exists()


# ---------------------------------------------------------------------------- sharded evaluation, in one process
def _sharded(evaluate, world: int) -> list[dict]:
    """Run ``evaluate(shard)`` as each of ``world`` processes would: a first pass collects each rank's sums, a
    second gives every rank the total (what the all-reduce returns)."""
    parts: list[torch.Tensor] = []
    for r in range(world):
        evaluate(EvalShard(r, world, lambda t: (parts.append(t.clone()), t)[1]))
    total = torch.stack(parts).sum(0)
    return [evaluate(EvalShard(r, world, lambda t: total.to(t.device))) for r in range(world)]


class _LongRecordings(torch.utils.data.Dataset):
    """Windows of 4 'files' of 5, 2, 4 and 1 windows (512 samples each; the last window of a file scores 300), with
    ``score_span`` as AudioClipDataset's held-out split has it."""

    def __init__(self):
        self.group = [0] * 5 + [1] * 2 + [2] * 4 + [3]
        self.x = torch.rand(len(self.group), 512, generator=torch.Generator().manual_seed(0)) * 1.6 - 0.8

    def __len__(self) -> int:
        return len(self.group)

    def __getitem__(self, i: int):
        return self.x[i], 0

    def score_span(self, i: int) -> tuple[int, int, int]:
        last = i + 1 == len(self.group) or self.group[i + 1] != self.group[i]
        return self.group[i], 0, 300 if last else 512


def test_shards_are_contiguous_cut_at_file_boundaries_and_padded_to_equal_forwards():
    assert shard_ranges(9, 2) == [(0, 4), (4, 9)] and forward_count([(0, 4), (4, 9)], 4) == 2
    ds = _LongRecordings()
    ranges = shard_ranges(len(ds), 3, lambda i: ds.group[i])
    assert ranges == [(0, 5), (5, 11), (11, 12)]  # cuts at 4 and 8 moved to the next file's start
    assert forward_count(ranges, 3) == 2
    assert shard_ranges(1, 3) == [(0, 0), (0, 0), (0, 1)] and shard_ranges(0, 2) == [(0, 0), (0, 0)]


def test_sharded_tokenizer_evaluation_equals_one_process_on_whole_files_and_images():
    tok = build_tokenizer(modality="audio", autoencoder="mulaw", quantizer="fsq", hidden_channels=4, latent_dim=4, fsq_levels=[3, 3],
                          sample_rate=8000, clip_samples=512)
    ds = _LongRecordings()
    calls = []
    tok.register_forward_hook(lambda m, i, o: calls.append(1))
    whole = evaluate_tokenizer(tok, ds, batch_size=3)
    assert whole["scored_files"] == 4 and whole["scored_samples"] == 8 * 512 + 4 * 300
    calls.clear()
    per_rank = _sharded(lambda s: evaluate_tokenizer(tok, ds, batch_size=3, shard=s), 3)
    assert len(calls) == 2 * 3 * 2  # two passes x three ranks x the same two forwards each (rank 2 pads one)
    for got in per_rank:
        assert got.keys() == whole.keys()
        for k in whole:
            assert got[k] == pytest.approx(whole[k], rel=1e-6, abs=1e-12), k  # float32 batch means regrouped
    # Images, with an evaluation limit (the first batches until 5 images: 6 of the 9)
    image = build_tokenizer(modality="image", quantizer="fsq", image_size=8, hidden_channels=4, latent_dim=4,
                            fsq_levels=[5, 5], num_res_blocks=1)
    _, te = worker.image_data()
    whole = evaluate_tokenizer(image, te, batch_size=3, limit=5)
    assert whole != evaluate_tokenizer(image, te, batch_size=3)  # the limit matters
    for got in _sharded(lambda s: evaluate_tokenizer(image, te, batch_size=3, limit=5, shard=s), 2):
        for k in whole:
            assert got[k] == pytest.approx(whole[k], rel=1e-9), k


def test_sharded_prior_evaluation_equals_one_process():
    prior = build_prior(arch="lstm", vocab_size=4, shape=(2, 3), lstm_hidden=8, num_classes=2)
    g = torch.Generator().manual_seed(1)
    ds = TokenGridDataset(torch.randint(0, 4, (11, 2, 3), generator=g), torch.randint(0, 2, (11,), generator=g))
    whole = evaluate_prior(prior, ds, 4, 6, True)
    for world in (2, 3, 4):
        for got in _sharded(lambda s: evaluate_prior(prior, ds, 4, 6, True, shard=s), world):
            assert got == pytest.approx(whole, rel=1e-12)

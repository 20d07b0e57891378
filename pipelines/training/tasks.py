"""What tokenizer and prior training supply to the shared loop in ``pipelines.train``: loss, metrics, saving."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from prior import Prior, build_prior
from tokenizers_vq import Tokenizer, build_tokenizer
from tokenizers_vq import metrics as M
from tokenizers_vq.code_stats import CodebookCounter, rate_metrics
from tokenizers_vq.discriminator import DiscriminatorConfig

from .adversarial import AdversarialTokenizer, tokenizer_of
from .evaluation import EvalShard, forward_count, shard_ranges
from .task import TrainTask


def _eval_batches(dataset: Dataset, batch_size: int, shard: EvalShard | None, limit: int | None = None,
                  group_of: Callable[[int], Any] | None = None, num_workers: int = 0
                  ) -> Iterator[tuple[int, Any, bool]]:
    """(index of the batch's first example in ``dataset``, batch, counted) for this process's share of ``dataset``
    in order (all of it when ``shard`` is None). ``limit``: only the first batches until ``limit`` examples are
    reached, as one process would read them. With a shard, batches with ``counted`` False follow until every
    process has run the same number of forwards (``EvalShard``): score them, then drop the result."""
    n = len(dataset)  # type: ignore[arg-type]
    if limit is not None:
        n = min(n, math.ceil(limit / batch_size) * batch_size)
    ranges = shard_ranges(n, 1 if shard is None else shard.world, group_of)
    lo, hi = ranges[0 if shard is None else shard.rank]
    done = 0
    loader = DataLoader(Subset(dataset, range(lo, hi)), batch_size=batch_size, shuffle=False, num_workers=num_workers)
    for i, batch in enumerate(loader):
        yield lo + i * batch_size, batch, True
        done += 1
    missing = forward_count(ranges, batch_size) - done if shard is not None else 0
    if missing > 0:
        pad = next(iter(DataLoader(Subset(dataset, range(min(batch_size, n))), batch_size=batch_size)))
        for _ in range(missing):
            yield 0, pad, False


MEL_MIN_SAMPLES = 1024  # log_mel_l1's n_fft: shorter signals (a short held-out tail) are zero-padded to it


class _WholeSignalScores:
    """Audio metrics on whole signals rebuilt from consecutive windows: ``add`` the scored span of each window
    in order; when the group (a file segment) changes, the finished signal is scored and weighted by its length."""

    def __init__(self, sample_rate: int):
        self.sample_rate = sample_rate
        self.group: int | None = None
        self.x: list[torch.Tensor] = []
        self.r: list[torch.Tensor] = []
        self.sums = {"si_snr": 0.0, "log_mel_l1": 0.0}
        self.samples = 0
        self.signals = 0

    def add(self, group: int, x: torch.Tensor, recon: torch.Tensor) -> None:
        """x, recon: float [n] (the window's new samples) of ``group``."""
        if group != self.group:
            self.flush()
            self.group = group
        self.x.append(x)
        self.r.append(recon)

    def flush(self) -> None:
        """Score the signal gathered so far (SI-SNR and log-mel L1 over the whole of it) and start the next."""
        if not self.x:
            return
        x, r = torch.cat(self.x)[None].float(), torch.cat(self.r)[None].float()
        n = x.shape[-1]
        self.sums["si_snr"] += M.si_snr(r, x).item() * n
        pad = max(0, MEL_MIN_SAMPLES - n)  # the STFT's reflect padding needs more than n_fft / 2 samples
        self.sums["log_mel_l1"] += M.log_mel_l1(F.pad(r, (0, pad)), F.pad(x, (0, pad)), self.sample_rate).item() * n
        self.samples += n
        self.signals += 1
        self.x, self.r = [], []


_SUMMED = ("psnr", "ssim", "si_snr", "log_mel_l1", "mu_law_accuracy", "loss")  # per-example means, summed x batch


@torch.no_grad()
def evaluate_tokenizer(tokenizer: Tokenizer, dataset: Dataset, batch_size: int = 128, progress: bool = False,
                       limit: int | None = None, shard: EvalShard | None = None, num_workers: int = 0
                       ) -> dict[str, float]:
    """Test-split metrics of a tokenizer.

    Images: PSNR (dB), SSIM, codebook usage (fraction of codes used on the split), code perplexity.
    Audio: SI-SNR (dB), log-mel L1, mu-law class accuracy, codebook usage, perplexity, bitrate (kbit/s).
    A dataset with ``score_span`` (``AudioClipDataset``: long files as consecutive windows) is scored on whole
    files: each window's new samples are stitched back into its file, SI-SNR and log-mel L1 are computed over
    each whole file and averaged per sample (a file weighs its length); ``scored_samples`` and ``scored_files``
    count what was scored (every sample of every test file once; a file shorter than a clip as its padded
    clip). Loss and mu-law accuracy stay per window (forward's own), averaged over windows.

    ``shard`` (multi-process training): this process scores its share (whole files for ``score_span`` datasets) and
    the sums and code counts are all-reduced, so every process returns the 1-process metrics (to float rounding).
    ``num_workers``: DataLoader worker processes that read the split (the same metrics for any number).
    """
    was = tokenizer.training
    tokenizer.eval()
    counts = CodebookCounter(tokenizer.vocab_size, tokenizer.num_codebooks)  # per codebook for rvq / rfsq
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    device = next(tokenizer.parameters()).device
    # Long timed files (audio) are scored as whole signals rebuilt from their windows.
    spans = getattr(dataset, "score_span", None) if tokenizer.modality.timed else None
    whole = _WholeSignalScores(tokenizer.config.sample_rate) if spans is not None else None
    group_of = (lambda i: spans(i)[0]) if spans is not None else None  # type: ignore[misc]
    batches = _eval_batches(dataset, batch_size, shard, limit, group_of, num_workers)
    for start, (x, _), counted in tqdm(batches, desc="evaluate", disable=not progress, leave=False):
        x = x.to(device).float()
        out = tokenizer(x)
        if not counted:  # a padding forward (see EvalShard)
            continue
        counts.add(out.codes)
        b = x.shape[0]
        if whole is not None:
            batch_metrics = {}
            for k in range(b):
                group, lo, hi = spans(start + k)  # type: ignore[misc]
                whole.add(group, x[k, lo:hi].cpu(), out.recon[k, lo:hi].cpu())
        else:  # the modality's: PSNR and SSIM of images, SI-SNR and log-mel L1 of audio clips
            batch_metrics = tokenizer.modality.recon_metrics(out.recon, x, tokenizer.sample_rate)
        if "accuracy" in out.metrics:  # a model-reported per-sample mu-law class accuracy, whatever the modality
            batch_metrics["mu_law_accuracy"] = float(out.metrics["accuracy"])
        batch_metrics["loss"] = out.loss.item()
        for k, v in batch_metrics.items():
            sums[k] = sums.get(k, 0.0) + v * b
            weights[k] = weights.get(k, 0.0) + b
    tokenizer.train(was)
    if whole is not None:
        whole.flush()  # a shard ends at a file boundary: its last file is complete
    # Everything that is summed over examples, in one float64 vector: one all-reduce for a sharded evaluation.
    scored = [whole.sums["si_snr"], whole.sums["log_mel_l1"], whole.samples, whole.signals] if whole else []
    stats = torch.tensor([sums.get(k, 0.0) for k in _SUMMED] + [weights.get(k, 0.0) for k in _SUMMED] + scored,
                         dtype=torch.float64)
    stats = torch.cat([stats, counts.counts.flatten().double()])
    if shard is not None:
        stats = shard.reduce(stats.to(device)).cpu()
    k = len(_SUMMED)
    res = {key: stats[i].item() / stats[k + i].item() for i, key in enumerate(_SUMMED) if stats[k + i] > 0}
    if whole is not None:
        si_snr, mel, samples, signals = stats[2 * k:2 * k + 4].tolist()
        res |= {"si_snr": si_snr / max(samples, 1), "log_mel_l1": mel / max(samples, 1)}
        res |= {"scored_samples": int(samples), "scored_files": int(signals)}
    counts.counts = stats[2 * k + len(scored):].round().long().view_as(counts.counts)
    # Residual tokenizers: usage/perplexity of the worst codebook plus each one's, and the bitrate at each n < q.
    res |= counts.metrics() | rate_metrics(tokenizer)
    return res


AUDIO_CROP_SAMPLES = 2048  # default training window for audio tokenizers (CLI, demo and bench share it)


class TokenizerTask(TrainTask):
    """Train a ``Tokenizer`` on (x, label) batches with its own reconstruction + quantizer loss."""

    name = "tokenizer"

    def __init__(self, tokenizer: Tokenizer, dataset_name: str, eval_limit: int | None = None,
                 crop_samples: int | None = None, adversarial: DiscriminatorConfig | None = None):
        """``crop_samples``: audio only; train on a random window of this many samples of each clip (a
        multiple of the tokenizer's downsample; None or 0: whole clips). Evaluation always sees whole clips.
        ``adversarial``: train against a discriminator (``AdversarialTokenizer``) when it is enabled."""
        self.tokenizer = tokenizer
        self.adversarial = adversarial if adversarial is not None and adversarial.enabled else None
        self.model = AdversarialTokenizer(tokenizer, self.adversarial) if self.adversarial else tokenizer
        self.dataset_name = dataset_name
        self.eval_limit = eval_limit
        if crop_samples:
            cfg = tokenizer.config
            if not tokenizer.modality.timed:
                raise ValueError(f"crop_samples cuts windows in time: it applies to audio tokenizers only, not "
                                 f"{tokenizer.modality}")
            if crop_samples % cfg.downsample:
                raise ValueError(f"crop_samples={crop_samples} is not a multiple of downsample={cfg.downsample}: "
                                 f"use {max(1, crop_samples // cfg.downsample) * cfg.downsample}")
        self.crop_samples = crop_samples or None

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, T] -> [B, min(T, crop_samples)]: an independent random window per clip (torch's RNG, which
        the training loop seeds and checkpoints). The tokenizer is fully convolutional, so short windows train
        the same weights at a fraction of the cost per step (measured on ``tones``: 2,048-sample windows gave
        more SI-SNR per CPU-second than 4,096 or whole 1 s clips)."""
        if self.crop_samples is None or x.shape[-1] <= self.crop_samples:
            return x
        offsets = torch.randint(0, x.shape[-1] - self.crop_samples + 1, (x.shape[0], 1), device=x.device)
        return x.gather(1, offsets + torch.arange(self.crop_samples, device=x.device))

    def validate_data(self, dataset: Dataset, split: str) -> None:
        """Inputs finite and in range (images [0, 1], audio [-1, 1]) once per split, so the training step skips that
        check (a host sync per step). In-memory splits (a ``.tensors`` attribute: TensorDataset, mnist5k) are checked
        whole here; the data layer's own datasets check what they read (audio_io: finite, scaled to peak <= 1;
        image_io: clamped to [0, 1]; the procedural sets are in range by construction)."""
        tensors = getattr(dataset, "tensors", None)
        if tensors:
            try:
                self.tokenizer._check_input(tensors[0].float())
            except ValueError as e:
                raise ValueError(f"{self.dataset_name} [{split}]: {e}") from None

    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        x = self.crop(batch[0].float())
        if self.adversarial:
            loss, metrics = model(x)  # AdversarialTokenizer: tokenizer and discriminator losses together
        else:
            out = model(x, check_values=False)  # validate_data checked the split: no host sync here
            loss, metrics = out.loss, out.metrics
        shown = {k: (v.detach() if isinstance(v, torch.Tensor) else v) for k, v in metrics.items()
                 if k in ("psnr", "accuracy", "temperature", "d_loss", "g_loss", "adv_weight")}
        return loss, shown  # tensors: the loop reads them on logging steps only

    def on_step(self, step: int) -> None:
        if self.adversarial:
            self.model.set_step(step)  # type: ignore[operator]

    def count(self, batch: Any) -> int:
        return int(batch[0].numel())

    # Codebook state (EMA statistics, k-means initialisation) is kept in sync by the quantizer itself: it all-reduces
    # the per-batch statistics (vector-quantize-pytorch's sync_codebook), so N processes update the codebook exactly
    # as one process with the N batches would (tests/pipelines/test_distributed.py compares the two).

    def evaluate(self, model: nn.Module, dataset: Dataset, batch_size: int,
                 shard: EvalShard | None = None) -> dict[str, float]:
        return evaluate_tokenizer(tokenizer_of(model), dataset, batch_size, limit=self.eval_limit, shard=shard)

    def unsharded_copy(self, state_dict: dict[str, torch.Tensor]) -> nn.Module:
        copy = build_tokenizer(self.tokenizer.config)
        if self.adversarial:
            copy = AdversarialTokenizer(copy, self.adversarial)
        copy.load_state_dict(state_dict)
        return copy

    def save_final(self, model: nn.Module, out: Path, metrics: dict[str, Any]) -> None:
        # The discriminator is training's only: the folder holds the tokenizer alone.
        tokenizer_of(model).save_pretrained(out, card_info={"dataset": self.dataset_name, "steps": metrics.get("step"),  # type: ignore[attr-defined]
                                              "metrics": metrics})


@dataclass
class HeldOut:
    """Training grids held out of training (int64 [n, *shape]), the grids trained on (int64 [m, *shape]: the local
    model is counted on them) and what the held-out ones are, in words: once the prior is trained, its scores on
    them become the folder's score reference (``score_reference.json``, ``score_local/``)."""

    grids: torch.Tensor
    fit: torch.Tensor
    source: str

    def record(self, prior: Prior, out: Path) -> None:
        from ..likelihood.score import reference_from_grids

        reference_from_grids(prior, self.grids, self.fit, self.source).save(out)


SHIFT_SALT = 0x5F7  # keeps the shift draws apart from any other generator seeded by (seed, epoch, index)


class TokenGridDataset(Dataset):
    """(tokens int64 [*shape], label int64) pairs from tensors, or from a sharded token folder's
    ``ShardedArray``s (``load_tokens``): then each batch reads its own rows from the memory-mapped shards, so a
    process reads only its share of the corpus and memory does not grow with it.

    ``shift`` > 0 (image grids ``[h, w]`` or ``[h, w, q]``, training only): each grid is rolled by a random offset
    in [-shift, shift] along height and along width, drawn per (seed, epoch, index) so runs and resumes repeat.
    On raw-pixel grids with a blank border (mnist5k: 6 black pixels) a roll of a few positions is a translation.
    """

    def __init__(self, tokens: torch.Tensor, labels: torch.Tensor, shift: int = 0, seed: int = 0):
        if shift < 0:
            raise ValueError(f"shift must be >= 0, got {shift}")
        if shift and tokens.dim() < 3:
            raise ValueError(f"--shift rolls image token grids [h, w]; these grids are {tuple(tokens.shape[1:])}")
        self.tokens, self.labels, self.shift, self.seed, self.epoch = tokens, labels, int(shift), int(seed), 0

    def __len__(self) -> int:
        return len(self.tokens)

    def set_epoch(self, epoch: int) -> None:
        """Draw this epoch's shifts (reproducibly per epoch)."""
        self.epoch = int(epoch)

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A DataLoader batch at once: one gather from the shards instead of one read per grid."""
        if self.shift or not hasattr(self.tokens, "subset"):
            return [self[i] for i in indices]
        idx = torch.as_tensor(indices, dtype=torch.long)
        tokens, labels = self.tokens[idx], self.labels[idx]
        return list(zip(tokens.unbind(0), labels.unbind(0), strict=True))

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.shift:
            return self.tokens[i], self.labels[i]
        dy, dx = np.random.default_rng([self.seed, self.epoch, int(i), SHIFT_SALT]).integers(
            -self.shift, self.shift + 1, size=2)
        return torch.roll(self.tokens[i], (int(dy), int(dx)), dims=(0, 1)), self.labels[i]


class TokenStreamDataset(Dataset):
    """(tokens int64 [window, *row], label int64) windows of ``window`` frames of the recordings of a streams folder
    (``load_token_streams``: frames [N, *row], offsets [R + 1], labels [R]); a window may cross a shard boundary (a
    contiguous range of the ``ShardedArray``).

    Recordings shorter than ``window`` frames are skipped (a prior of fixed shape has no pad token; padding with a
    real code would teach it a sound that is not there). Training (``train=True``): ``max(1, round(T_i / window))``
    windows of recording i per epoch, so windows are drawn in proportion to length, stratified as
    ``AudioClipDataset`` draws its clips: window k of a recording's n starts in the k-th n-th of its possible
    offsets, drawn from a generator seeded by (seed, epoch, item), so the same seed gives the same windows and a
    resumed run repeats them (``set_epoch`` each epoch). Otherwise (the test split): the consecutive windows
    ``[k window, (k + 1) window)`` covering each recording, the last one ending at its end.
    """

    def __init__(self, frames: torch.Tensor, offsets: np.ndarray, labels: np.ndarray, window: int, train: bool,
                 seed: int = 0):
        if window < 1:
            raise ValueError(f"--window must be at least 1 frame, got {window}")
        self.tokens, self.window, self.train, self.seed, self.epoch = frames, int(window), bool(train), int(seed), 0
        self.offsets, self.rec_labels = np.asarray(offsets, np.int64), np.asarray(labels, np.int64)
        lengths = np.diff(self.offsets)
        rec, a, b = [], [], []
        for i, n in enumerate(lengths.tolist()):
            if n < window:
                continue
            if train:
                k = max(1, round(n / window))
                rec += [i] * k
                a += list(range(k))
                b += [k] * k
            else:
                k = -(-n // window)
                rec += [i] * k
                a += [min(j * window, n - window) for j in range(k)]
                b += [0] * k
        self.skipped = int(np.sum(lengths < window))
        self._rec, self._a, self._b = (np.asarray(v, dtype=np.int64) for v in (rec, a, b))
        # ``PriorTask.validate_data`` checks tokens and labels: the frames' range from the writer, labels per window
        self.labels = torch.as_tensor(self.rec_labels[self._rec], dtype=torch.long)

    def __len__(self) -> int:
        return len(self._rec)

    def set_epoch(self, epoch: int) -> None:
        """Draw this epoch's training windows (reproducibly per epoch); no effect on covering windows."""
        self.epoch = int(epoch)

    def start(self, j: int) -> int:
        """The first frame (in the split's frames) of item j's window."""
        i = int(self._rec[j])
        if not self.train:
            return int(self.offsets[i] + self._a[j])
        k, n = int(self._a[j]), int(self._b[j])
        slack = int(self.offsets[i + 1] - self.offsets[i]) - self.window
        lo, hi = k * (slack + 1) // n, max((k + 1) * (slack + 1) // n, k * (slack + 1) // n + 1)
        return int(self.offsets[i]) + lo + int(np.random.default_rng([self.seed, self.epoch, j]).integers(0, hi - lo))

    def __getitem__(self, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= j < len(self):
            raise IndexError(j)
        a = self.start(j)
        return self.tokens[a: a + self.window], self.labels[j]


@torch.no_grad()
def evaluate_prior(prior: Prior, dataset: Dataset, batch_size: int, dims_per_input: int, conditional: bool,
                   shard: EvalShard | None = None,
                   log_prob: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor] | None = None) -> dict[str, float]:
    """Held-out NLL of (tokens, label) pairs: nats per grid, bits per token, bits per dimension (grid code length /
    ``dims_per_input``). ``shard``: this process scores its share and the sums are all-reduced (``EvalShard``).
    ``log_prob``: what scores a batch (tokens int64 [B, *shape], labels [B] or None -> float [B]); default
    ``prior.log_prob``; training passes the loss wrapper's forward, which FSDP's hooks see."""
    was = prior.training
    prior.eval()
    score = log_prob or prior.log_prob
    total, n = 0.0, 0
    device = prior.device
    for _, (tokens, labels), counted in _eval_batches(dataset, batch_size, shard):
        tokens = tokens.to(device)
        lp = score(tokens, labels.to(device) if conditional else None)
        if counted:
            total += -lp.double().sum().item()
            n += tokens.shape[0]
    prior.train(was)
    if shard is not None:
        total, n = shard.reduce(torch.tensor([total, n], dtype=torch.float64, device=device)).tolist()
    nll = total / max(n, 1)
    return {"nll_nats": nll, "bits_per_token": nll / math.log(2) / prior.config.seq_len,
            "bits_per_dim": nll / math.log(2) / dims_per_input}


class PriorTask(TrainTask):
    """Train a ``Prior`` by maximum likelihood on (tokens, label) batches."""

    name = "prior"

    def __init__(self, prior: Prior, tokens_dir: str, dims_per_input: int, reference: HeldOut | None = None):
        self.model = PriorLossWrapper(prior)
        self.tokens_dir = tokens_dir
        self.dims_per_input = dims_per_input
        self.conditional = prior.config.num_classes > 0
        self.reference = reference  # held-out grids: the saved prior's score reference is measured on them

    def validate_data(self, dataset: Dataset, split: str) -> None:
        """All token grids in [0, vocab) and of the prior's shape, all labels in [0, num_classes): once per split,
        so the training step skips these checks (a host sync each)."""
        bounds = None
        if isinstance(dataset, TokenStreamDataset):  # windows of frames: the writer's range, no scan
            frames, labels = dataset.tokens, dataset.labels
            bounds = frames.bounds() if hasattr(frames, "bounds") else (int(frames.min()), int(frames.max()))
            if not len(frames):
                bounds = (0, -1)
            tokens = torch.zeros((min(1, len(dataset)), dataset.window, *frames.shape[1:]), dtype=torch.long)  # the shape
        elif isinstance(dataset, TokenGridDataset):
            tokens, labels = dataset.tokens, dataset.labels
            if hasattr(tokens, "bounds"):  # a sharded folder: the range its writer checked and recorded, no scan
                bounds = tokens.bounds()
                labels = labels.materialize() if self.conditional else labels
        else:  # any (tokens, label) dataset: one pass
            items = [dataset[i] for i in range(len(dataset))]  # type: ignore[arg-type]
            tokens = torch.stack([torch.as_tensor(t) for t, _ in items])
            labels = torch.stack([torch.as_tensor(lab) for _, lab in items])
        prior = self.model.prior  # type: ignore[union-attr]
        try:
            prior.check_tokens(tokens, values=bounds is None)
            if bounds is not None and len(tokens) and (bounds[0] < 0 or bounds[1] >= prior.vocab_size):
                raise ValueError(f"tokens must lie in [0, {prior.vocab_size}), got range [{bounds[0]}, {bounds[1]}]; "
                                 "is this prior trained on the same tokenizer?")
            if self.conditional:
                prior.check_labels(labels, len(labels), labels.device)
        except ValueError as e:
            raise ValueError(f"{self.tokens_dir} [{split}]: {e}") from None

    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        tokens, labels = batch
        loss = model(tokens, labels if self.conditional else None)
        return loss, {"bits_per_token": loss.detach() / math.log(2)}  # a tensor: no host sync per step

    def count(self, batch: Any) -> int:
        return int(batch[0].numel())

    def evaluate(self, model: nn.Module, dataset: Dataset, batch_size: int,
                 shard: EvalShard | None = None) -> dict[str, float]:
        # Scored through the wrapper's forward, so that under FSDP its hooks gather the parameters first.
        return evaluate_prior(model.prior, dataset, batch_size, self.dims_per_input, self.conditional,  # type: ignore[union-attr]
                              shard=shard, log_prob=lambda t, lab: model(t, lab, per_grid=True))

    def unsharded_copy(self, state_dict: dict[str, torch.Tensor]) -> nn.Module:
        copy = PriorLossWrapper(build_prior(self.model.prior.config))  # type: ignore[union-attr]
        copy.load_state_dict(state_dict)
        return copy

    def save_final(self, model: nn.Module, out: Path, metrics: dict[str, Any]) -> None:
        model.prior.save_pretrained(out, card_info={"tokens": self.tokens_dir, "steps": metrics.get("step"),  # type: ignore[union-attr]
                                                    "metrics": metrics})
        if self.reference is not None:
            self.reference.record(model.prior, out)  # type: ignore[arg-type]


class PriorLossWrapper(nn.Module):
    """Makes ``Prior.loss`` the ``forward`` so DDP/FSDP wrap the call that computes the loss (their gradient
    hooks are armed in ``forward``). Its state dict is the prior's under ``prior.``."""

    def __init__(self, prior: Prior):
        super().__init__()
        self.prior = prior

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor | None = None, per_grid: bool = False) -> torch.Tensor:
        """tokens int64 [B, *shape], labels int64 [B] or None -> the mean NLL per token in nats (scalar), or with
        ``per_grid`` each grid's log-likelihood float [B] (``Prior.log_prob``, for evaluation)."""
        if per_grid:
            return self.prior.log_prob(tokens, labels)
        # ``PriorTask.validate_data`` checked every split before training: no per-step host sync here.
        return self.prior.loss(tokens, labels, check_values=False)


"""What tokenizer and prior training supply to the shared loop in ``pipelines.train``: loss, metrics, saving."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from prior import Prior
from tokenizers_vq import Tokenizer
from tokenizers_vq import metrics as M
from tokenizers_vq.code_stats import CodebookCounter, rate_metrics

from .loop import TrainTask


def _loader(dataset: Dataset, batch_size: int) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False)


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


@torch.no_grad()
def evaluate_tokenizer(tokenizer: Tokenizer, dataset: Dataset, batch_size: int = 128, progress: bool = False,
                       limit: int | None = None) -> dict[str, float]:
    """Test-split metrics of a tokenizer.

    Images: PSNR (dB), SSIM, codebook usage (fraction of codes used on the split), code perplexity.
    Audio: SI-SNR (dB), log-mel L1, mu-law class accuracy, codebook usage, perplexity, bitrate (kbit/s).
    A dataset with ``score_span`` (``AudioClipDataset``: long files as consecutive windows) is scored on whole
    files: each window's new samples are stitched back into its file, SI-SNR and log-mel L1 are computed over
    each whole file and averaged per sample (a file weighs its length); ``scored_samples`` and ``scored_files``
    count what was scored (every sample of every test file once; a file shorter than a clip as its padded
    clip). Loss and mu-law accuracy stay per window (forward's own), averaged over windows.
    """
    was = tokenizer.training
    tokenizer.eval()
    counts = CodebookCounter(tokenizer.vocab_size, tokenizer.num_codebooks)  # per codebook for rvq / rfsq
    sums: dict[str, float] = {}
    n = 0
    device = next(tokenizer.parameters()).device
    spans = getattr(dataset, "score_span", None) if tokenizer.modality == "audio" else None
    whole = _WholeSignalScores(tokenizer.config.sample_rate) if spans is not None else None
    for x, _ in tqdm(_loader(dataset, batch_size), desc="evaluate", disable=not progress, leave=False):
        if limit is not None and n >= limit:
            break
        x = x.to(device).float()
        out = tokenizer(x)
        counts.add(out.codes)
        b = x.shape[0]
        if tokenizer.modality == "image":
            batch_metrics = {"psnr": M.psnr(out.recon.clamp(0, 1), x).item(), "ssim": M.ssim(out.recon.clamp(0, 1), x).item()}
        elif whole is not None:
            batch_metrics = {}
            for k in range(b):
                group, lo, hi = spans(n + k)  # type: ignore[misc]
                whole.add(group, x[k, lo:hi].cpu(), out.recon[k, lo:hi].cpu())
        else:
            batch_metrics = {"si_snr": M.si_snr(out.recon, x).mean().item(),
                             "log_mel_l1": M.log_mel_l1(out.recon, x, tokenizer.config.sample_rate).item()}
        if tokenizer.modality == "audio" and "accuracy" in out.metrics:
            batch_metrics["mu_law_accuracy"] = float(out.metrics["accuracy"])
        batch_metrics["loss"] = out.loss.item()
        for k, v in batch_metrics.items():
            sums[k] = sums.get(k, 0.0) + v * b
        n += b
    tokenizer.train(was)
    res = {k: v / max(n, 1) for k, v in sums.items()}
    if whole is not None:
        whole.flush()
        res |= {k: v / max(whole.samples, 1) for k, v in whole.sums.items()}
        res |= {"scored_samples": whole.samples, "scored_files": whole.signals}
    # Residual tokenizers: usage/perplexity of the worst codebook plus each one's, and the bitrate at each n < q.
    res |= counts.metrics() | rate_metrics(tokenizer)
    return res


AUDIO_CROP_SAMPLES = 2048  # default training window for audio tokenizers (CLI, demo and bench share it)


class TokenizerTask(TrainTask):
    """Train a ``Tokenizer`` on (x, label) batches with its own reconstruction + quantizer loss."""

    name = "tokenizer"

    def __init__(self, tokenizer: Tokenizer, dataset_name: str, eval_limit: int | None = None,
                 crop_samples: int | None = None):
        """``crop_samples``: audio only; train on a random window of this many samples of each clip (a
        multiple of the tokenizer's downsample; None or 0: whole clips). Evaluation always sees whole clips."""
        self.model = tokenizer
        self.dataset_name = dataset_name
        self.eval_limit = eval_limit
        if crop_samples:
            cfg = tokenizer.config
            if cfg.modality != "audio":
                raise ValueError("crop_samples applies to audio tokenizers only")
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

    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        x = self.crop(batch[0].float())
        out = model(x)
        shown = {k: float(v) for k, v in out.metrics.items() if k in ("psnr", "accuracy", "temperature")}
        return out.loss, shown

    def count(self, batch: Any) -> int:
        return int(batch[0].numel())

    def on_step(self, step: int) -> None:
        # Codebook state (EMA statistics, k-means init flags, Gumbel annealing step) lives in buffers. The VQ
        # all-reduces its statistics, but we measured ranks drifting apart by one EMA update under DDP, so
        # after every optimizer step rank 0's buffers are made authoritative: codebooks cannot diverge.
        if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            for buf in self.model.buffers():
                torch.distributed.broadcast(buf, src=0)

    def evaluate(self, model: nn.Module, dataset: Dataset, batch_size: int) -> dict[str, float]:
        return evaluate_tokenizer(model, dataset, batch_size, limit=self.eval_limit)  # type: ignore[arg-type]

    def save_final(self, model: nn.Module, out: Path, metrics: dict[str, Any]) -> None:
        model.save_pretrained(out, card_info={"dataset": self.dataset_name, "steps": metrics.get("step"),  # type: ignore[attr-defined]
                                              "metrics": metrics})


class TokenGridDataset(Dataset):
    """(tokens int64 [*shape], label int64) pairs from tensors."""

    def __init__(self, tokens: torch.Tensor, labels: torch.Tensor):
        self.tokens, self.labels = tokens, labels

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tokens[i], self.labels[i]


@torch.no_grad()
def evaluate_prior(prior: Prior, dataset: Dataset, batch_size: int, dims_per_input: int,
                   conditional: bool) -> dict[str, float]:
    """Held-out NLL: nats per grid, bits per token, bits per dimension (grid code length / input dims)."""
    was = prior.training
    prior.eval()
    total, n = 0.0, 0
    device = prior.device
    for tokens, labels in _loader(dataset, batch_size):
        tokens = tokens.to(device)
        lp = prior.log_prob(tokens, labels.to(device) if conditional else None)
        total += -lp.double().sum().item()
        n += tokens.shape[0]
    prior.train(was)
    nll = total / max(n, 1)
    return {"nll_nats": nll, "bits_per_token": nll / math.log(2) / prior.config.seq_len,
            "bits_per_dim": nll / math.log(2) / dims_per_input}


class PriorTask(TrainTask):
    """Train a ``Prior`` by maximum likelihood on (tokens, label) batches."""

    name = "prior"

    def __init__(self, prior: Prior, tokens_dir: str, dims_per_input: int):
        self.model = PriorLossWrapper(prior)
        self.tokens_dir = tokens_dir
        self.dims_per_input = dims_per_input
        self.conditional = prior.config.num_classes > 0

    def validate_data(self, dataset: Dataset, split: str) -> None:
        """All token grids in [0, vocab) and of the prior's shape, all labels in [0, num_classes): once per split,
        so the training step skips these checks (a host sync each)."""
        if isinstance(dataset, TokenGridDataset):
            tokens, labels = dataset.tokens, dataset.labels
        else:  # any (tokens, label) dataset: one pass
            items = [dataset[i] for i in range(len(dataset))]  # type: ignore[arg-type]
            tokens = torch.stack([torch.as_tensor(t) for t, _ in items])
            labels = torch.stack([torch.as_tensor(lab) for _, lab in items])
        prior = self.model.prior  # type: ignore[union-attr]
        try:
            prior.check_tokens(tokens)
            if self.conditional:
                prior._labels(labels, len(labels), labels.device)
        except ValueError as e:
            raise ValueError(f"{self.tokens_dir} [{split}]: {e}") from None

    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        tokens, labels = batch
        loss = model(tokens, labels if self.conditional else None)
        return loss, {"bits_per_token": loss.item() / math.log(2)}

    def count(self, batch: Any) -> int:
        return int(batch[0].numel())

    def evaluate(self, model: nn.Module, dataset: Dataset, batch_size: int) -> dict[str, float]:
        return evaluate_prior(model.prior, dataset, batch_size, self.dims_per_input, self.conditional)  # type: ignore[union-attr]

    def save_final(self, model: nn.Module, out: Path, metrics: dict[str, Any]) -> None:
        model.prior.save_pretrained(out, card_info={"tokens": self.tokens_dir, "steps": metrics.get("step"),  # type: ignore[union-attr]
                                                    "metrics": metrics})


class PriorLossWrapper(nn.Module):
    """Makes ``Prior.loss`` the ``forward`` so DDP/FSDP wrap the call that computes the loss (their gradient
    hooks are armed in ``forward``). Its state dict is the prior's under ``prior.``."""

    def __init__(self, prior: Prior):
        super().__init__()
        self.prior = prior

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        # ``PriorTask.validate_data`` checked every split before training: no per-step host sync here.
        return self.prior.loss(tokens, labels, check_values=False)


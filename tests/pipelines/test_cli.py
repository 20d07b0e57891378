"""Every `vqgen` subcommand end to end on built-in data with tiny models, plus pre-emption by SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from pipelines.cli import main

TINY_TOK = ["--hidden-channels", "8", "--latent-dim", "8", "--num-res-blocks", "1", "--fsq-levels", "5,4"]
TINY_PRIOR = ["--n-layer", "1", "--n-head", "2", "--d-model", "16"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tokenizer, token folder and prior trained once for the module."""
    d = tmp_path_factory.mktemp("cli")
    assert main(["train-tokenizer", "--dataset", "mnist5k", "--limit", "64", "--quantizer", "fsq", "--out", str(d / "tok"),
                 "--steps", "3", "--batch-size", "16", "--eval-limit", "32", "--quiet", *TINY_TOK]) == 0
    assert main(["tokenize", "--tokenizer", str(d / "tok"), "--dataset", "mnist5k", "--limit", "64", "--out",
                 str(d / "tokens"), "--quiet"]) == 0
    assert main(["train-prior", "--tokens", str(d / "tokens"), "--arch", "transformer", "--conditional", "--out",
                 str(d / "prior"), "--steps", "3", "--batch-size", "16", "--quiet", *TINY_PRIOR]) == 0
    return d


def test_train_tokenizer_writes_a_saved_folder(run):
    for f in ("config.json", "model.safetensors", "metrics.json", "README.md"):
        assert (run / "tok" / f).is_file()
    metrics = json.loads((run / "tok" / "metrics.json").read_text())
    assert {"psnr", "ssim", "codebook_usage", "perplexity"} <= metrics.keys()
    assert metrics["step"] == 3
    assert "load_tokenizer" in (run / "tok" / "README.md").read_text()


def test_tokenize_header_and_grids(run):
    header = json.loads((run / "tokens" / "tokens.json").read_text())
    assert header["vocab_size"] == 20 and header["token_shape"] == [8, 8] and header["num_classes"] == 10
    assert header["format_version"] == 3 and [f["file"] for f in header["shards"]["train"]["files"]] == [
        "train-00000.safetensors"]
    t = load_file(str(run / "tokens" / "train-00000.safetensors"))  # 20 codes: one byte per token
    assert t["tokens"].shape == (64, 8, 8) and t["tokens"].dtype == torch.uint8 and t["tokens"].max() < 20


def test_reconstruct_writes_png_and_metrics(run, capsys):
    assert main(["reconstruct", "--tokenizer", str(run / "tok"), "--dataset", "mnist5k", "--out",
                 str(run / "rec.png"), "--n", "8", "--quiet"]) == 0
    assert (run / "rec.png").stat().st_size > 100
    assert "psnr" in capsys.readouterr().out


def test_sample_is_reproducible_and_checks_pairing(run, tmp_path, capsys):
    args = ["sample", "--prior", str(run / "prior"), "--tokenizer", str(run / "tok"), "--n", "4", "--label", "3", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "a"), "--seed", "7"]) == 0
    assert main([*args, "--out", str(tmp_path / "b"), "--seed", "7"]) == 0
    a = json.loads((tmp_path / "a" / "tokens.json").read_text())
    assert a == json.loads((tmp_path / "b" / "tokens.json").read_text())
    meta = json.loads((tmp_path / "a" / "samples.json").read_text())
    assert meta["labels"] == [3] * 4 and meta["seed"] == 7
    assert (tmp_path / "a" / "grid.png").is_file() and (tmp_path / "a" / "sample_0003.png").is_file()
    # another tokenizer is refused before any work, naming both fingerprints
    assert main(["train-tokenizer", "--dataset", "mnist5k", "--limit", "32", "--out", str(tmp_path / "tok2"), "--steps", "1",
                 "--batch-size", "16", "--eval-limit", "16", "--quiet", *TINY_TOK]) == 0
    capsys.readouterr()
    assert main(["sample", "--prior", str(run / "prior"), "--tokenizer", str(tmp_path / "tok2"), "--n", "2",
                 "--out", str(tmp_path / "c"), "--quiet"]) == 2
    err = capsys.readouterr().err
    recorded = json.loads((run / "prior" / "codec.json").read_text())["fingerprint"]
    from tokenizers_vq import load_tokenizer

    assert recorded in err and load_tokenizer(tmp_path / "tok2").fingerprint in err and recorded != ""
    assert not (tmp_path / "c").exists()


def test_score_and_compress_roundtrip(run, tmp_path, capsys):
    assert main(["score", "--prior", str(run / "prior"), "--dataset", "mnist5k", "--out", str(tmp_path / "s.csv"),
                 "--quiet"]) == 0
    lines = (tmp_path / "s.csv").read_text().splitlines()
    assert len(lines) == 501 and "bits_per_dim" in lines[0]
    from PIL import Image

    from pipelines.data import DataSpec, load_data

    splits = load_data(DataSpec("mnist5k"))
    files = []
    for i in range(3):
        f = tmp_path / f"d{i}.png"
        Image.fromarray((splits.test[i][0][0].numpy() * 255).astype("uint8")).save(f)
        files.append(str(f))
    capsys.readouterr()
    assert main(["compress", "--prior", str(run / "prior"), *files, "--out", str(tmp_path / "c.vqz"), "--quiet"]) == 0
    printed = capsys.readouterr().out  # the file, payload, ideal bits and overhead; no PNG / gzip baselines
    assert all(k in printed for k in ("file_bytes", "payload_bytes", "ideal_bits", "payload_overhead"))
    assert "png" not in printed and "gzip" not in printed
    assert main(["decompress", "--prior", str(run / "prior"), str(tmp_path / "c.vqz"), "--out", str(tmp_path / "dec"),
                 "--quiet"]) == 0
    assert len(list((tmp_path / "dec").glob("*.png"))) == 3


def test_export_from_checkpoint_matches_final(run, tmp_path):
    assert main(["export", "--tokenizer", str(run / "tok" / "checkpoints" / "checkpoint-00000003"),
                 "--out", str(tmp_path / "exp")]) == 0
    a, b = load_file(str(run / "tok" / "model.safetensors")), load_file(str(tmp_path / "exp" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert main(["export", "--prior", str(run / "prior"), "--out", str(tmp_path / "pexp")]) == 0
    from prior import load_prior

    p1, p2 = load_prior(str(run / "prior")), load_prior(str(tmp_path / "pexp"))
    t = torch.randint(0, 20, (2, 8, 8))
    assert torch.equal(p1.log_prob(t, torch.tensor([1, 2])), p2.log_prob(t, torch.tensor([1, 2])))


def test_clear_errors(tmp_path, capsys):
    assert main(["train-tokenizer", "--dataset", "no-such-data", "--out", str(tmp_path / "x"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "unknown dataset" in err and "mnist5k" in err and "shapes" in err
    assert main(["train-prior", "--tokens", str(tmp_path), "--arch", "transformer", "--out", str(tmp_path / "p")]) == 2
    assert "vqgen tokenize" in capsys.readouterr().err
    assert main(["reconstruct", "--tokenizer", str(tmp_path), "--dataset", "mnist5k", "--out", str(tmp_path / "r.png")]) == 2
    assert "config.json" in capsys.readouterr().err


def test_demo_quick(tmp_path):
    assert main(["demo", "--quick", "--out", str(tmp_path / "demo"), "--quiet"]) == 0
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert 0.0 <= summary["samples_label_agreement"] <= 1.0
    assert (tmp_path / "demo" / "samples" / "grid.png").is_file()
    assert (tmp_path / "demo" / "reconstructions.png").is_file()


def _vqgen(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "pipelines.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def test_sigterm_checkpoints_and_resume_matches_uninterrupted(tmp_path):
    from pipelines.data.tokens import TokenHeader, save_tokens
    from tokenizers_vq import RawCodec

    g = torch.Generator().manual_seed(0)
    first = torch.randint(0, 4, (256, 4, 1), generator=g)
    t = first.expand(256, 4, 4).contiguous()
    codec = RawCodec("image", 256, (1, 4, 4))  # any codec record: the prior only needs vocabulary and grid
    save_tokens(tmp_path / "tok", TokenHeader(vocab_size=4, token_shape=(4, 4), modality="image", dataset="toy",
                                              codec=codec.record()),
                {"train": (t, torch.zeros(256, dtype=torch.long)), "test": (t[:32], torch.zeros(32, dtype=torch.long))})
    common = ["train-prior", "--tokens", str(tmp_path / "tok"), "--arch", "transformer", "--steps", "300",
              "--batch-size", "8", "--save-every", "5", "--eval-every", "1000", "--quiet", *TINY_PRIOR]
    p = _vqgen(*common, "--out", str(tmp_path / "cut"))
    deadline = time.time() + 120
    while not list((tmp_path / "cut" / "checkpoints").glob("checkpoint-*")) and time.time() < deadline:
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 0, out
    assert "stopped at step" in out, out
    assert not (tmp_path / "cut" / "model.safetensors").exists()
    r = _vqgen(*common, "--out", str(tmp_path / "cut"), "--resume")
    out2, _ = r.communicate(timeout=300)
    assert r.returncode == 0 and "resumed from" in out2, out2
    f = _vqgen(*common, "--out", str(tmp_path / "full"))
    f.communicate(timeout=300)
    a, b = load_file(str(tmp_path / "full" / "model.safetensors")), load_file(str(tmp_path / "cut" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)


def test_audio_pipeline_end_to_end(tmp_path, capsys):
    tiny = ["--hidden-channels", "8", "--latent-dim", "8", "--num-res-blocks", "1", "--fsq-levels", "5,4"]
    clip = ["--clip-seconds", "0.256", "--limit", "16"]
    assert main(["train-tokenizer", "--modality", "audio", "--audio-head", "logistic", "--dataset", "tones", "--out",
                 str(tmp_path / "tok"), "--steps", "2", "--batch-size", "4", "--eval-limit", "8", "--quiet", *clip,
                 *tiny]) == 0
    cfg = json.loads((tmp_path / "tok" / "config.json").read_text())
    assert cfg["modality"] == "audio" and cfg["clip_samples"] == 4096
    assert main(["reconstruct", "--tokenizer", str(tmp_path / "tok"), "--dataset", "tones", "--n", "2",
                 "--out", str(tmp_path / "rec"), "--quiet"]) == 0
    assert "si_snr" in capsys.readouterr().out
    assert (tmp_path / "rec" / "00_original.wav").is_file() and (tmp_path / "rec" / "spectrograms.png").is_file()

    wav, sr = sf.read(str(tmp_path / "rec" / "00_reconstruction.wav"))
    assert sr == 16000 and wav.shape == (4096,)
    assert main(["tokenize", "--tokenizer", str(tmp_path / "tok"), "--dataset", "tones", "--out", str(tmp_path / "tokens"),
                 "--quiet", "--limit", "16"]) == 0
    header = json.loads((tmp_path / "tokens" / "tokens.json").read_text())
    assert header["token_shape"] == [64] and header["modality"] == "audio"
    assert main(["train-prior", "--tokens", str(tmp_path / "tokens"), "--arch", "wavenet", "--out", str(tmp_path / "prior"),
                 "--steps", "2", "--batch-size", "4", "--quiet", "--residual-channels", "8", "--dilation-cycle", "3"]) == 0
    assert main(["sample", "--prior", str(tmp_path / "prior"), "--n", "2", "--out", str(tmp_path / "samples"),
                 "--quiet"]) == 0  # the prior folder records its codec
    wav, sr = sf.read(str(tmp_path / "samples" / "sample_0001.wav"))
    assert sr == 16000 and wav.shape == (4096,) and abs(wav).max() <= 1
    assert (tmp_path / "samples" / "spectrograms.png").is_file()


def test_spectral_codec_trains_in_bf16_on_a_cpu_with_bf16_in_hardware(tmp_path, monkeypatch):
    """--mixed-precision auto (the default) gives the spectral family bf16 autocast on a CPU with bf16 in hardware
    (1.38x the steps on real speech), fp32 without; an explicit --mixed-precision, and the image families, as
    before."""
    import pipelines.training.accelerator as acc

    monkeypatch.setattr(acc.torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    run = ["train-tokenizer", "--dataset", "tones", "--steps", "1", "--batch-size", "2", "--eval-limit", "2",
           "--quiet", "--clip-seconds", "0.32", "--limit", "4", "--istft-dim", "16", "--istft-layers", "1"]

    def precision(out: str) -> str:
        return json.loads((tmp_path / out / "train_config.json").read_text())["mixed_precision"]

    for native, extra, out, want in ((True, [], "a", "bf16"), (False, [], "b", "auto"),
                                     (True, ["--mixed-precision", "no"], "c", "no")):
        monkeypatch.setattr(acc, "cpu_has_native_bf16", lambda native=native: native)
        assert main([*run, *extra, "--out", str(tmp_path / out)]) == 0
        assert precision(out) == want, (native, extra)
    assert main(["train-tokenizer", "--dataset", "mnist5k", "--steps", "1", "--batch-size", "4", "--quiet",
                 "--limit", "8", "--eval-limit", "4", "--out", str(tmp_path / "img")]) == 0
    assert precision("img") == "auto"  # the image families keep fp32 on CPU
    monkeypatch.setattr(acc, "cpu_has_native_bf16", lambda: True)
    assert main([*run, "--harmonics", "4", "--out", str(tmp_path / "h")]) == 0
    assert precision("h") == "auto"  # the experimental harmonic source was measured in fp32
    # a run started in fp32 (before this rule, or on another CPU) resumes in fp32, and a bf16 run in bf16
    for out in ("b", "a"):
        assert main([*run[:3], *run[5:], "--steps", "2", "--resume", "--out", str(tmp_path / out)]) == 0
    assert (precision("b"), precision("a")) == ("auto", "bf16")


def test_audio_tokenizer_defaults_to_the_spectral_codec(tmp_path, capsys):
    """No family and no quantizer named: the spectral codec with the shipped tokenizer's 5 residual codebooks of 512
    codes (issue 24), whether the modality is given or read from the data; a mu-law flag is refused by name."""
    from tokenizers_vq import TokenizerConfig

    run = ["train-tokenizer", "--dataset", "tones", "--steps", "1", "--batch-size", "2", "--eval-limit", "2",
           "--quiet", "--clip-seconds", "0.32", "--limit", "4", "--istft-dim", "16", "--istft-layers", "1"]
    for extra, out in ((["--modality", "audio"], "a"), ([], "b")):
        assert main([*run, *extra, "--out", str(tmp_path / out)]) == 0
        cfg = TokenizerConfig.from_file(tmp_path / out / "config.json")
        assert (cfg.autoencoder, cfg.quantizer, cfg.num_quantizers, cfg.codebook_size) == ("spectral", "rvq", 5, 512)
        assert cfg.dead_code_threshold == 0.1 and cfg.downsample == 320
        assert json.loads((tmp_path / out / "train_config.json").read_text())["lr"] == 1e-3  # the family's default
    assert main([*run, "--out", str(tmp_path / "c"), "--hidden-channels", "8"]) == 2
    assert "--hidden-channels is a setting of autoencoder family mulaw" in capsys.readouterr().err
    assert main([*run, "--out", str(tmp_path / "d"), "--num-quantizers", "2", "--quantizer", "rvq"]) == 0
    assert TokenizerConfig.from_file(tmp_path / "d" / "config.json").num_quantizers == 2
    assert main([*run, "--out", str(tmp_path / "lr"), "--lr", "3e-3"]) == 0  # an explicit --lr wins
    assert json.loads((tmp_path / "lr" / "train_config.json").read_text())["lr"] == 3e-3
    assert main([*run, "--out", str(tmp_path / "e"), "--causal"]) == 0  # the streaming codec: reconstruct says so
    capsys.readouterr()
    assert main(["reconstruct", "--tokenizer", str(tmp_path / "e"), "--dataset", "tones", "--n", "1", "--limit", "4",
                 "--out", str(tmp_path / "rec"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "streaming: True" in out and "latency_ms: 35.0000" in out
    assert json.loads((tmp_path / "rec" / "metrics.json").read_text())["latency_ms"] == 35.0


def test_audio_tokenizer_rate_follows_narrowband_data(tmp_path, capsys):
    """A folder recorded at 8 kHz trains an 8 kHz codec by default (hop 160: still 50 frames/s and 2.25 kbit/s, and
    reconstruct writes 8 kHz audio); --sample-rate 16000 resamples it up as before."""
    from tokenizers_vq import TokenizerConfig

    data = tmp_path / "nb"
    data.mkdir()
    t = np.arange(8000) / 8000
    for i in range(6):
        sf.write(data / f"{i}.wav", (0.4 * np.sin(2 * np.pi * (150 + 30 * i) * t)).astype(np.float32), 8000,
                 subtype="PCM_16")
    run = ["train-tokenizer", "--dataset", str(data), "--steps", "1", "--batch-size", "2", "--eval-limit", "2",
           "--quiet", "--istft-dim", "16", "--istft-layers", "1"]
    for extra, rate, hop in (([], 8000, 160), (["--sample-rate", "16000", "--lr", "2e-3"], 16000, 320)):
        assert main([*run, *extra, "--out", str(tmp_path / str(rate))]) == 0
        cfg = TokenizerConfig.from_file(tmp_path / str(rate) / "config.json")
        assert (cfg.sample_rate, cfg.downsample, cfg.clip_samples) == (rate, hop, rate)  # 1 s clips either way
    # a run resumed without --sample-rate and --lr keeps its rate and lr (runs from before these defaults)
    assert main([*run[:4], "2", *run[5:], "--resume", "--out", str(tmp_path / "16000")]) == 0
    cfg = TokenizerConfig.from_file(tmp_path / "16000" / "config.json")
    assert cfg.sample_rate == 16000 and json.loads((tmp_path / "16000" / "metrics.json").read_text())["step"] == 2
    assert json.loads((tmp_path / "16000" / "train_config.json").read_text())["lr"] == 2e-3
    assert main(["reconstruct", "--tokenizer", str(tmp_path / "8000"), "--dataset", str(data), "--n", "1",
                 "--out", str(tmp_path / "rec"), "--quiet"]) == 0
    wavs = sorted((tmp_path / "rec").rglob("*.wav"))
    assert wavs and all(sf.info(str(w)).samplerate == 8000 for w in wavs)


def test_gumbel_kl_weight_reaches_the_saved_config(tmp_path):
    common = ["train-tokenizer", "--modality", "audio", "--audio-head", "logistic", "--dataset", "tones", "--quantizer",
              "gumbel", "--steps", "1",
              "--batch-size", "2", "--eval-limit", "2", "--quiet", "--clip-seconds", "0.064", "--limit", "4",
              "--hidden-channels", "8", "--latent-dim", "8", "--num-res-blocks", "1", "--codebook-size", "16"]
    assert main([*common, "--out", str(tmp_path / "a"), "--gumbel-kl-weight", "0.3"]) == 0
    assert main([*common, "--out", str(tmp_path / "b")]) == 0
    from tokenizers_vq import TokenizerConfig

    assert json.loads((tmp_path / "a" / "config.json").read_text())["quantizer_config"]["gumbel_kl_weight"] == 0.3
    assert TokenizerConfig.from_file(tmp_path / "b" / "config.json").gumbel_kl_weight == 0.1  # the audio default


def test_raw_pixels_histogram_score_and_lossless_compress(tmp_path):
    assert main(["tokenize", "--raw", "--levels", "2", "--dataset", "mnist5k", "--limit", "64", "--out",
                 str(tmp_path / "tok"), "--quiet"]) == 0
    header = json.loads((tmp_path / "tok" / "tokens.json").read_text())
    assert header["codec"]["class_name"] == "RawCodec" and header["codec"]["config"]["levels"] == 2
    assert header["vocab_size"] == 2 and header["token_shape"] == [32, 32]
    assert main(["train-prior", "--tokens", str(tmp_path / "tok"), "--arch", "histogram", "--out",
                 str(tmp_path / "prior"), "--quiet"]) == 0
    metrics = json.loads((tmp_path / "prior" / "metrics.json").read_text())
    assert 0 < metrics["bits_per_dim"] < 1  # binarised digits: well under 1 bit per pixel
    assert main(["score", "--prior", str(tmp_path / "prior"), "--dataset", "mnist5k", "--out", str(tmp_path / "s.csv"),
                 "--quiet"]) == 0
    assert "raw_likelihood" in (tmp_path / "s.csv").read_text().splitlines()[1]
    from PIL import Image

    img = (torch.rand(32, 32) > 0.7).numpy().astype("uint8") * 255
    Image.fromarray(img).save(tmp_path / "x.png")
    assert main(["compress", "--prior", str(tmp_path / "prior"), str(tmp_path / "x.png"), "--out",
                 str(tmp_path / "x.vqz"), "--quiet"]) == 0
    assert main(["decompress", "--prior", str(tmp_path / "prior"), str(tmp_path / "x.vqz"), "--out",
                 str(tmp_path / "dec"), "--quiet"]) == 0
    (out,) = list((tmp_path / "dec").glob("*.png"))
    import numpy as np

    assert np.array_equal(np.asarray(Image.open(out)), img)  # raw pixels: exact


def test_docs_cli_md_matches_the_parser():
    """docs/CLI.md is every command's --help; regenerate it (see ``cli_markdown``) when an option changes."""
    from pipelines.cli import cli_markdown

    doc = Path(__file__).resolve().parents[2] / "docs" / "CLI.md"
    assert doc.read_text() == cli_markdown(), "docs/CLI.md is stale: regenerate it as pipelines.cli.cli_markdown says"


def test_prior_folder_records_codec_and_guided_sampling_defaults(run, tmp_path):
    rec = json.loads((run / "prior" / "codec.json").read_text())
    assert rec["class_name"] == "Tokenizer" and Path(rec["path"]) == (run / "tok").resolve() and len(rec["fingerprint"]) == 32
    assert json.loads((run / "prior" / "sampling.json").read_text())["cfg_scale"] == 2.0  # conditional: guided
    assert json.loads((run / "prior" / "class_names.json").read_text())[3] == "3"
    assert main(["sample", "--prior", str(run / "prior"), "--n", "2", "--label", "5", "--out", str(tmp_path / "a"),
                 "--quiet"]) == 0
    meta = json.loads((tmp_path / "a" / "samples.json").read_text())
    assert meta["cfg_scale"] == 2.0 and "cfg_scale" in meta["settings_from_prior_folder"]
    assert main(["sample", "--prior", str(run / "prior"), "--n", "2", "--label", "5", "--cfg-scale", "1",
                 "--out", str(tmp_path / "b"), "--quiet"]) == 0
    meta = json.loads((tmp_path / "b" / "samples.json").read_text())
    assert meta["cfg_scale"] == 1.0 and "cfg_scale" not in meta["settings_from_prior_folder"]


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("what", ["tokenizer", "prior", "tokens"])
def test_truncated_weights_or_tokens_are_a_clear_error(run, tmp_path, capsys, what):
    import shutil

    for name in ("tok", "tokens", "prior"):
        shutil.copytree(run / name, tmp_path / name, ignore=shutil.ignore_patterns("checkpoints"))
    codec = json.loads((tmp_path / "prior" / "codec.json").read_text())
    codec["path"] = str(tmp_path / "tok")
    (tmp_path / "prior" / "codec.json").write_text(json.dumps(codec))
    bad = {"tokenizer": tmp_path / "tok" / "model.safetensors", "prior": tmp_path / "prior" / "model.safetensors",
           "tokens": tmp_path / "tokens" / "train-00000.safetensors"}[what]
    _truncate(bad)
    commands = {
        "tokenizer": [["reconstruct", "--tokenizer", str(tmp_path / "tok"), "--dataset", "mnist5k", "--limit", "8",
                       "--out", str(tmp_path / "r.png")],
                      ["sample", "--prior", str(tmp_path / "prior"), "--n", "1", "--out", str(tmp_path / "s")]],
        "prior": [["sample", "--prior", str(tmp_path / "prior"), "--n", "1", "--out", str(tmp_path / "s")],
                  ["score", "--prior", str(tmp_path / "prior"), "--dataset", "mnist5k", "--out", str(tmp_path / "x.csv")]],
        "tokens": [["train-prior", "--tokens", str(tmp_path / "tokens"), "--arch", "histogram", "--out", str(tmp_path / "p")]],
    }[what]
    for argv in commands:
        capsys.readouterr()
        assert main([*argv, "--quiet"]) == 2
        err = capsys.readouterr().err
        assert str(bad) in err and "truncated or corrupt" in err and "Traceback" not in err, err


def test_saved_files_follow_the_umask(tmp_path):
    from prior import build_prior
    from tokenizers_vq import RawCodec, build_tokenizer

    old = os.umask(0o022)
    try:
        build_tokenizer(hidden_channels=8).save_pretrained(tmp_path / "tok")
        build_prior(arch="histogram", vocab_size=3, shape=(2, 3)).save_pretrained(tmp_path / "prior")
        RawCodec("image", 2, (1, 4, 4)).save_pretrained(tmp_path / "raw")
        for f in [*(tmp_path / "tok").iterdir(), *(tmp_path / "prior").iterdir(), *(tmp_path / "raw").iterdir()]:
            assert f.stat().st_mode & 0o777 == 0o644, f"{f} has mode {oct(f.stat().st_mode & 0o777)}"
        os.umask(0o077)
        RawCodec("image", 2, (1, 4, 4)).save_pretrained(tmp_path / "private")
        assert (tmp_path / "private" / "config.json").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


def test_ngram_prior_fits_by_counting_and_compresses_losslessly(tmp_path):
    assert main(["tokenize", "--raw", "--levels", "2", "--dataset", "mnist5k", "--limit", "200", "--out",
                 str(tmp_path / "pix"), "--quiet"]) == 0
    assert main(["train-prior", "--tokens", str(tmp_path / "pix"), "--arch", "ngram", "--ngram-order", "10",
                 "--out", str(tmp_path / "ng"), "--quiet"]) == 0
    assert main(["train-prior", "--tokens", str(tmp_path / "pix"), "--arch", "histogram", "--out", str(tmp_path / "h"),
                 "--quiet"]) == 0
    ng = json.loads((tmp_path / "ng" / "metrics.json").read_text())["nll_nats"]
    hist = json.loads((tmp_path / "h" / "metrics.json").read_text())["nll_nats"]
    assert ng < 0.6 * hist, (ng, hist)  # JBIG-like context counts beat per-pixel counts by far on digits
    from PIL import Image

    img = (torch.rand(32, 32) > 0.8).numpy().astype("uint8") * 255
    Image.fromarray(img).save(tmp_path / "x.png")
    assert main(["compress", "--prior", str(tmp_path / "ng"), str(tmp_path / "x.png"), "--out", str(tmp_path / "x.vqz"),
                 "--quiet"]) == 0
    assert main(["decompress", "--prior", str(tmp_path / "ng"), str(tmp_path / "x.vqz"), "--out", str(tmp_path / "d"),
                 "--quiet"]) == 0
    import numpy as np

    assert np.array_equal(np.asarray(Image.open(tmp_path / "d" / "x.png")), img)


def test_every_stage_takes_device():
    """--device on every stage that runs a model (training included), parsed into the namespace the stage reads."""
    from pipelines.cli import parse_command

    base = {
        "train-tokenizer": ["--dataset", "mnist5k", "--out", "o"], "train-prior": ["--tokens", "t", "--arch", "lstm",
                                                                                   "--out", "o"],
        "reconstruct": ["--tokenizer", "t", "--dataset", "mnist5k", "--out", "o"],
        "tokenize": ["--raw", "--dataset", "mnist5k", "--out", "o"], "sample": ["--prior", "p", "--out", "o"],
        "score": ["--prior", "p", "--dataset", "mnist5k", "--out", "o.csv"], "compress": ["--prior", "p", "f.png",
                                                                                         "--out", "o"],
        "decompress": ["--prior", "p", "f.vqz", "--out", "o"],
    }
    for cmd, args in base.items():
        assert parse_command([cmd, *args, "--device", "cpu"])[1].device == "cpu", cmd


def test_training_device_errors_are_clear(tmp_path):
    import pytest
    import torch

    from pipelines.training.accelerator import make_accelerator
    from pipelines.training.config import TrainConfig

    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            make_accelerator(TrainConfig(out=str(tmp_path), device="cuda"), tmp_path, with_trackers=False)
    with pytest.raises(ValueError, match="training runs on cpu or cuda"):
        make_accelerator(TrainConfig(out=str(tmp_path), device="meta"), tmp_path, with_trackers=False)
    assert make_accelerator(TrainConfig(out=str(tmp_path), device="cpu"), tmp_path, with_trackers=False).device.type == "cpu"

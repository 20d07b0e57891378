"""Speech codecs live: real-time factor on one CPU thread and latency of vqgen's causal spectral codec, streamed
chunk by chunk, against Codec2 and Opus on the same audio (issue 24).

The audio is the spoken-digits test split (2 held-out voices, 16 kHz) joined end to end and cut to ``--seconds``.
Each row codes all of it, encode then decode, and reports the real-time factor (seconds of audio per second of
compute, the best of ``--repeats``; 50x = a 20 ms frame coded and decoded in 0.4 ms):

- vqgen stream, c frames per call: ``tok.stream_encoder()`` then ``tok.stream_decoder()`` on each chunk of c tokens'
  samples, as a live call would (latency = the codec's algorithmic latency + (c - 1) frames of buffering);
- vqgen ONNX stream: the same through ``encoder_step.onnx`` / ``decoder_step.onnx`` in onnxruntime (one intra-op
  thread), the export `vqgen export` writes for a causal codec;
- vqgen offline: ``encode`` / ``decode`` of the whole signal (not a stream: the latency is the signal's length);
- Codec2 (``c2enc`` + ``c2dec``, 8 kHz raw files) and Opus (``opusenc`` + ``opusdec``), one process each way on
  the whole file (the resampling to 8 kHz is not timed). Their latency is documented, not measured: Opus at its
  default 20 ms frames 26.5 ms (RFC 6716); Codec2 one frame (20 ms; 40 ms for 1300 and 700C) plus the output delay
  ``bench.speech_quality`` measures (about 20-28 ms), where that run is on record.

``--tokenizer DIR [DIR ...]`` times trained causal codecs, compares the first one's stream (one frame per call)
with its offline coding (tokens and samples, and spectrograms in docs/benchmarks/codec_stream.png) and, with ``--quality``, adds
STOI and the spoken-digit listener's accuracy on the 180 held-out clips from ``bench.speech_quality``'s functions
(``--classifier DIR``: the listener; default ``runs/speech_classifier``, else one is trained), for the peers too.
``--sizes 256x6 128x4 64x2`` (the default without ``--tokenizer``) also times freshly initialised causal codecs of
those istft_dim x istft_layers with the shipped bottleneck (5 residual codebooks of 512 codes): the time does not
depend on the weights, so these rows show what a smaller model would buy; they have no quality.

Run: ``OMP_NUM_THREADS=1 python -m bench.codec_speed [--tokenizer DIR --quality]`` (writes bench/results/
codec_speed.json and docs/benchmarks/codec_speed.md); ``--quick`` times 5 s of a small model and prints only.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torchaudio.functional as AF

from bench.common import ROOT, cpu_model, timed, write_results
from bench.speech_peers import CODEC2_MODES, CODEC2_RATE, MissingTool, _to_int16, codec2_kbps, require
from tokenizers_vq import build_tokenizer, load_tokenizer
from tokenizers_vq.tokenizer import truncate_codebooks

SR = 16000
OPUS_LATENCY_MS = 26.5  # RFC 6716 2.1: 20 ms frames + 6.5 ms of look-ahead at the default frame size
CODEC2_FRAME_MS = {"3200": 20, "2400": 20, "1300": 40, "700C": 40}
SHIPPED_SIZE: tuple[int, int] = (256, 6)  # istft_dim, istft_layers of the shipped spoken-digits codec
DEFAULT_SIZES = [SHIPPED_SIZE, (128, 4), (64, 2)]


def trained_label(tok: Any) -> str:
    """``trained causal DIMxLAYERS`` of a trained codec (its ConvNeXt stacks' width and depth)."""
    c = tok.config
    return f"trained causal {c.istft_dim}x{c.istft_layers}"


def test_audio(seconds: float) -> torch.Tensor:
    """The spoken-digits test clips joined: float32 [seconds * 16000] in [-1, 1] (repeated if too short)."""
    from pipelines.data import DataSpec, load_data

    splits = load_data(DataSpec("spoken-digits"))
    x = torch.cat([splits.test[i][0].float().reshape(-1) for i in range(len(splits.test))])
    n = int(seconds * SR)
    return x.repeat(-(-n // len(x)))[:n]


def causal_codec(path: str | None, size: tuple[int, int] | None, quick: bool, seed: int,
                 codebooks: int | None = None) -> Any:
    """The trained causal tokenizer at ``path``, or a fresh one with ``size`` = (istft_dim, istft_layers) and the
    shipped bottleneck (its codebooks initialised by k-means in one training call, as training's first step)."""
    if path:
        tok = load_tokenizer(path).eval()
        tok._streaming_model()  # the clear error for a codec that is not causal
        return truncate_codebooks(tok, codebooks) if codebooks else tok
    torch.manual_seed(seed)
    books = dict(num_quantizers=5, codebook_size=64 if quick else 512)
    tok = build_tokenizer(modality="audio", causal=True, clip_samples=SR, istft_dim=size[0], istft_layers=size[1],
                          **books)
    q = tok.model.quantizer
    q.dropout = False  # every codebook k-means-initialised by this one call (dropout would skip some)
    tok.train()(torch.rand(32, SR) * 1.6 - 0.8)  # 1,600 latents: no duplicated codes among 512
    q.dropout = True
    return tok.eval()


def parse_size(text: str) -> tuple[int, int]:
    """'256x6' -> (istft_dim 256, istft_layers 6)."""
    dim, _, layers = text.partition("x")
    if not (dim.isdigit() and layers.isdigit()):
        raise argparse.ArgumentTypeError(f"a size is DIMxLAYERS, e.g. 256x6, got {text!r}")
    return int(dim), int(layers)


def best_of(repeats: int, fn) -> float:
    """The fastest of ``repeats`` calls of ``fn()``, in seconds (the least disturbed by other work)."""
    return min(timed(fn)[0] for _ in range(repeats))


def stream_seconds(tok: Any, x: torch.Tensor, frames: int, repeats: int) -> float:
    """Seconds to stream x through stream_encoder + stream_decoder, ``frames`` tokens' samples per call."""
    step = frames * tok.model.hop

    def run() -> None:
        enc, dec = tok.stream_encoder(), tok.stream_decoder()
        for i in range(0, len(x), step):
            dec(enc(x[i:i + step]))
        dec(enc.flush())
        dec.flush()

    run()  # warm-up: first-call allocations
    return best_of(repeats, run)


def onnx_seconds(info: dict[str, Any], x: torch.Tensor, hop: int, frames: int, repeats: int) -> float:
    """Seconds to stream x through exported step graphs (``export_stream_steps``'s ``info``) in onnxruntime on one
    thread, ``frames`` tokens per call (whole frames only; scaled to all of x)."""
    from tokenizers_vq.onnx_stream import OnnxStream

    step = frames * hop
    xs = x[: len(x) // step * step].numpy()

    def run() -> float:
        s = OnnxStream(info["encoder_step"], info["decoder_step"], info, threads=1)
        t0 = time.perf_counter()
        for i in range(0, len(xs), step):
            s.decode(s.encode(xs[i:i + step]))
        s.flush()
        return time.perf_counter() - t0  # the stream alone, not the session's creation

    run()  # warm-up
    return min(run() for _ in range(repeats)) * len(x) / len(xs)


def stream_vs_offline(tok: Any, x: torch.Tensor, png: Path) -> dict[str, Any]:
    """Decode x's tokens offline and streamed a frame at a time (encoder and decoder), write their spectrograms
    with the input's and the difference's scale to ``png``; returns the largest sample difference and the tokens
    that differ."""
    from tokenizers_vq.modality.audio import spectrogram_image

    n = len(x) // tok.model.hop * tok.model.hop
    x = x[:n]
    with torch.no_grad():
        tokens = tok.encode(x[None])[0]
        offline = tok.decode(tokens[None])[0]
    enc, dec = tok.stream_encoder(), tok.stream_decoder()
    hop = tok.model.hop
    streamed_tokens = torch.cat([*(enc(x[i:i + hop]) for i in range(0, n, hop)), enc.flush()])
    streamed = torch.cat([*(dec(streamed_tokens[j:j + 1]) for j in range(len(streamed_tokens))), dec.flush()])
    diff = (streamed[:n] - offline).abs()
    clip = slice(0, min(n, 3 * SR))  # three seconds: the words stay readable
    spectrogram_image([x[clip], offline[clip], streamed[:n][clip], (streamed[:n] - offline)[clip] * 1e4], SR,
                      labels=["input", "offline decode", "streamed, 1 frame per call", "difference x 10^4"]).save(png)
    return {"max_abs_diff": float(diff.max()), "tokens_differ": int((streamed_tokens != tokens).sum()),
            "png": str(png.relative_to(ROOT))}


def vqgen_rows(tok: Any, x: torch.Tensor, args: argparse.Namespace, label: str) -> list[dict[str, Any]]:
    """Rows of one causal codec: its stream at each ``--frames``, its ONNX stream at each ``--onnx-frames``, offline."""
    seconds, frame_ms = len(x) / SR, 1000 * tok.model.hop / SR
    kbps = tok.frame_rate * tok.num_codebooks * tok.bits_per_token / 1000
    params = sum(p.numel() for p in tok.model.parameters())
    common = {"family": "vqgen", "model": label, "params": params, "kbps": kbps}

    def row(how: str, t: float, frames: int | None) -> dict[str, Any]:
        r = {"codec": f"vqgen {label}, {how}", **common, "rtf": seconds / t,
             "latency_ms": None if frames is None else tok.latency_ms + (frames - 1) * frame_ms}
        if frames is not None:
            r["ms_per_call"] = 1000 * t / (seconds * 1000 / frame_ms / frames)
        print(json.dumps(r), flush=True)
        return r

    rows = [row(f"stream, {f} frame(s) per call", stream_seconds(tok, x, f, args.repeats), f) for f in args.frames]
    if args.onnx:
        from tokenizers_vq.onnx_stream import export_stream_steps

        with tempfile.TemporaryDirectory(prefix="codec-speed-") as tmp:
            info = export_stream_steps(tok, tmp)  # checked against the PyTorch stream on export
            rows += [row(f"ONNX stream, {f} frame(s) per call", onnx_seconds(info, x, tok.model.hop, f, args.repeats), f)
                     for f in args.onnx_frames]
    xp = torch.nn.functional.pad(x, (0, -len(x) % tok.model.hop))[None]
    with torch.no_grad():
        rows.append(row("offline (whole signal)", best_of(args.repeats, lambda: tok.decode(tok.encode(xp))), None))
    return rows


def peer_speed_rows(x: torch.Tensor, repeats: int, delays_ms: dict[str, float]) -> list[dict[str, Any]]:
    """Codec2 modes and Opus at 6 kbit/s on x, each tool once per direction on the whole file."""
    import subprocess

    seconds, rows = len(x) / SR, []
    with tempfile.TemporaryDirectory(prefix="codec-speed-") as tmp:
        d = Path(tmp)
        _to_int16(AF.resample(x, SR, CODEC2_RATE)).tofile(d / "in8.raw")
        _to_int16(x).tofile(d / "in16.raw")
        jobs = [(f"Codec2 {m}", codec2_kbps(m), [["c2enc", m, d / "in8.raw", d / "c2.bit"],
                                                  ["c2dec", m, d / "c2.bit", d / "c2.raw"]]) for m in CODEC2_MODES]
        jobs.append(("Opus 6k", 6.0, [["opusenc", "--quiet", "--bitrate", "6", "--raw", "--raw-rate", str(SR),
                                       "--raw-chan", "1", d / "in16.raw", d / "o.opus"],
                                      ["opusdec", "--quiet", "--rate", str(SR), d / "o.opus", d / "o.raw"]]))
        for name, kbps, cmds in jobs:
            try:
                exe = [require(c[0]) for c in cmds]
            except MissingTool as e:
                rows.append({"codec": name, "skipped": str(e)})
                continue

            def run(exe: list[str] = exe, cmds: list[list[Any]] = cmds) -> None:
                for e, c in zip(exe, cmds):
                    subprocess.run([e, *map(str, c[1:])], check=True, capture_output=True)

            run()
            t = best_of(repeats, run)
            mode = name.split()[-1]
            if name.startswith("Opus"):
                latency, how = OPUS_LATENCY_MS, "documented (RFC 6716)"
            elif name in delays_ms:
                latency, how = CODEC2_FRAME_MS[mode] + delays_ms[name], "frame + measured output delay"
            else:
                latency, how = None, "frame + output delay: run bench.speech_quality to measure the delay"
            rows.append({"codec": name, "family": name.split()[0].lower(), "kbps": kbps, "rtf": seconds / t,
                         "latency_ms": latency, "latency_source": how})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def recorded_delays() -> dict[str, float]:
    """Codec2's output delays (ms) that bench.speech_quality measured, by codec name, where on record."""
    path = ROOT / "bench" / "results" / "speech_quality.json"
    if not path.is_file():
        return {}
    return {r["codec"]: r["delay_ms"] for r in json.loads(path.read_text())["results"] if "delay_ms" in r}


def quality(rows: list[dict[str, Any]], trained: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    """Add STOI and the listener's accuracy on the 180 held-out clips to every row (the vqgen rows share the
    offline decode's: a stream equals it, tests/tokenizers_vq/test_streaming.py); returns the listener's record."""
    from bench.speech_quality import peer_rows, tokenizer_rows
    from pipelines.data import DataSpec, load_data
    from pipelines.demo.speech_judge import (
        load_audio_classifier,
        save_audio_classifier,
        train_audio_classifier,
    )

    splits = load_data(DataSpec("spoken-digits"))
    test = [splits.test[i] for i in range(len(splits.test))]
    xs, ys = torch.stack([x for x, _ in test]).float(), torch.stack([y for _, y in test])
    if (Path(args.classifier) / "config.json").is_file():
        clf, info = load_audio_classifier(args.classifier), {"loaded": args.classifier}
    else:
        t0 = time.time()
        clf, _ = train_audio_classifier(splits.train, None, splits.num_classes, SR, epochs=30, seed=args.seed)
        save_audio_classifier(clf, args.classifier)
        info = {"trained_s": round(time.time() - t0, 1), "saved": args.classifier, "epochs": 30}
    scored = {r["codec"]: r for r in peer_rows(xs, ys, SR, clf) if "stoi" in r}
    ours = {label: tokenizer_rows(path, [args.codebooks] if args.codebooks else None, xs, ys, SR, clf)[0]
            for label, path in trained.items()}
    for r in rows:
        q = ours.get(r.get("model", "")) or scored.get(r["codec"])
        if q:
            r["stoi"], r["listener"] = q["stoi"], q["accuracy"]
        if r["codec"] in scored and r.get("latency_ms") is None and "delay_ms" in scored[r["codec"]]:
            mode = r["codec"].split()[-1]
            r["latency_ms"] = CODEC2_FRAME_MS[mode] + scored[r["codec"]]["delay_ms"]
            r["latency_source"] = "frame + measured output delay"
    return info


def fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def markdown(res: dict[str, Any]) -> str:
    meta, rows = res["meta"], res["rows"]
    q = any("stoi" in r for r in rows)
    head = "| codec | kbit/s | real-time factor, 1 thread | latency ms | ms per call |" + (" STOI | listener |" if q else "")
    out = ["## Speech codecs live: speed on one thread and latency (`bench/codec_speed.py`)", "",
           f"`{res['command']}`. {res['audio_s']:g} s of the spoken-digits test "
           "voices joined, coded and decoded; real-time factor = seconds of audio per second of compute (best of "
           f"{meta['repeats']}), on **one thread** (torch and onnxruntime set to 1; Codec2 and Opus are single-threaded "
           "command-line tools, one process per direction on the whole file, so they pay no per-frame call). "
           "Latency: vqgen's is algorithmic (one 20 ms token + 3 STFT hops of synthesis window, `Tokenizer.latency_ms`) "
           "plus the frames a chunk waits for; Opus's is documented (RFC 6716, 20 ms frames); Codec2's is its frame plus "
           "the output delay bench.speech_quality measures. " + meta["model_note"], "",
           head, "|---|---:|---:|---:|---:|" + ("---:|---:|" if q else "")]
    for r in rows:
        if "skipped" in r:
            out.append(f"| {r['codec']} | skipped: {r['skipped']} |")
            continue
        line = (f"| {r['codec']} | {r['kbps']:.2f} | {r['rtf']:.1f}x | {fmt(r.get('latency_ms'), '.1f')} | "
                f"{fmt(r.get('ms_per_call'), '.2f')} |")
        if q:
            line += f" {fmt(r.get('stoi'), '.3f')} | {fmt(r.get('listener') and 100 * r['listener'], '.1f')}{'%' if r.get('listener') else ''} |"
        out.append(line)
    out += ["", f"Machine: {meta['cpu']}, {meta['cores']} cores, torch {meta['torch']}, onnxruntime "
            f"{meta.get('onnxruntime', '-')}; load average {meta['load_start']} at the start, {meta['load_end']} at "
            "the end (other jobs slow every row alike; compare ratios within this table)."]
    if res.get("stream_vs_offline"):
        c = res["stream_vs_offline"]
        out += ["", f"Streamed (one frame per call, encoder and decoder) against offline coding of the same "
                f"{res['audio_s']:g} s: {c['tokens_differ']} tokens differ, largest sample difference "
                f"{c['max_abs_diff']:.2g}.", "", f"![input, offline, streamed and their difference]({Path(c['png']).name})"]
    return "\n".join(out)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench.codec_speed", description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", nargs="+", default=None, metavar="DIR", help="trained causal audio tokenizers "
                    "(default: fresh ones of the sizes below; same speed, no quality); the first one's stream is "
                    "compared with its offline coding")
    ap.add_argument("--sizes", type=parse_size, nargs="+", default=None, metavar="DIMxLAYERS",
                    help="untrained codec sizes timed too (default: 256x6 128x4 64x2 without --tokenizer, none with)")
    ap.add_argument("--codebooks", type=int, default=None, help="with --tokenizer: code with its first N residual "
                    "codebooks (default all)")
    ap.add_argument("--seconds", type=float, default=30.0, help="seconds of audio coded per row (default 30)")
    ap.add_argument("--frames", type=int, nargs="+", default=[1, 2, 5, 50], help="tokens per streaming call")
    ap.add_argument("--onnx-frames", type=int, nargs="+", default=[1, 2, 5], help="tokens per ONNX streaming call")
    ap.add_argument("--no-onnx", dest="onnx", action="store_false", help="skip the ONNX rows")
    ap.add_argument("--no-peers", dest="peers", action="store_false", help="skip Codec2 and Opus")
    ap.add_argument("--quality", action="store_true", help="with --tokenizer: add STOI and the listener")
    ap.add_argument("--classifier", default=str(ROOT / "runs" / "speech_classifier"), metavar="DIR")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="5 s of a small model, 1 repeat; print only")
    ap.add_argument("--results-name", default="codec_speed", help="write bench/results/NAME.json and "
                    "docs/benchmarks/NAME.md (default codec_speed; another name keeps that table)")
    ap.add_argument("--seed", type=int, default=0)
    return ap


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    if args.quality and not args.tokenizer:
        raise SystemExit("--quality needs --tokenizer DIR: a fresh codec's STOI means nothing")
    if args.quick:
        args.seconds, args.repeats, args.frames, args.onnx_frames = 5.0, 1, [1, 5], [1]
        args.sizes = [(32, 2)]
    torch.set_num_threads(1)  # the issue's measure: one thread
    load_start = [round(v, 2) for v in os.getloadavg()]
    x = test_audio(args.seconds)
    rows, params = [], {}
    compare = None
    trained = {}  # label -> folder
    for path in args.tokenizer or []:
        tok = causal_codec(path, None, args.quick, args.seed, args.codebooks)
        label = trained_label(tok)
        trained[label] = path
        rows += vqgen_rows(tok, x, args, label)
        params[label] = rows[-1]["params"]
        if compare is None:
            png = "codec_stream.png" if args.results_name == "codec_speed" else f"{args.results_name}_stream.png"
            compare = stream_vs_offline(tok, x, ROOT / "docs" / "benchmarks" / png)
    sizes = args.sizes if args.sizes is not None else ([] if args.tokenizer else DEFAULT_SIZES)
    for size in sizes:
        label = f"causal {size[0]}x{size[1]} (untrained)"
        rows += vqgen_rows(causal_codec(None, size, args.quick, args.seed), x, args, label)
        params[label] = rows[-1]["params"]
    if args.peers:
        rows += peer_speed_rows(x, args.repeats, recorded_delays())
    meta: dict[str, Any] = {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
                            "repeats": args.repeats, "load_start": load_start, "params": params}
    meta["model_note"] = (
        "".join(f"`{k}`: the causal codec `{v}`. " for k, v in trained.items())
        + ("Untrained rows: freshly initialised causal codecs of istft_dim x istft_layers (the shipped spoken-digits "
           f"codec is 256x6), 5 residual codebooks of {64 if args.quick else 512} codes: the time does not depend on "
           "the weights, the quality does. " if sizes else "")
        + f"Parameters: {'; '.join(f'{k}: {v / 1e6:.2f}M' for k, v in params.items())}.")
    if args.quality:
        meta["classifier"] = quality(rows, trained, args)
    try:
        import onnxruntime

        meta["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    meta["load_end"] = [round(v, 2) for v in os.getloadavg()]
    argv_s = " ".join(argv if argv is not None else __import__("sys").argv[1:])
    res = {"command": f"python -m bench.codec_speed {argv_s}".strip(), "audio_s": len(x) / SR, "meta": meta, "rows": rows,
           "stream_vs_offline": compare}
    if args.quick:
        print(markdown(res))
    else:
        write_results(args.results_name, res, markdown(res))
    return res


if __name__ == "__main__":
    main()

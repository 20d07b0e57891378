"""``vqgen codec encode | decode``: audio <-> the fixed-rate token stream of ``tokenizers_vq.bitstream``, through
files or pipes, as Codec2's c2enc / c2dec.

A causal tokenizer (``--causal``) streams: raw PCM read from a pipe is encoded as it arrives and each frame written
(and flushed) as soon as it is complete; the decoder writes samples as soon as they are final. A non-causal tokenizer
reads its whole input first (its encoder looks ahead). Input: a WAV/FLAC/OGG file (mixed to mono, resampled to the
codec's rate) or ``-``, raw 16-bit little-endian mono PCM at the codec's rate on stdin. Output of decode: a WAV file
(16-bit PCM) or ``-``, the same raw PCM on stdout. Decoded audio covers whole frames (the input's last partial frame
is zero-padded, as Codec2 does).
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from tokenizers_vq import Tokenizer, load_codec
from tokenizers_vq.bitstream import StreamError, StreamHeader, pack_frames, unpack_frames

READ_BYTES = 1 << 14  # what one read from a pipe asks for; read1 returns what is there without waiting for more
FILE_CHUNK_S = 1.0  # seconds of a file fed to a streaming encoder at a time


def _audio_tokenizer(tokenizer_dir: str | Path, device: str) -> Tokenizer:
    tok = load_codec(tokenizer_dir, map_location=device)
    if not isinstance(tok, Tokenizer) or not tok.modality.timed:
        raise ValueError(f"{tokenizer_dir} is not an audio tokenizer: `vqgen codec` codes audio (images: `vqgen "
                         "compress`)")
    return tok.eval()


def _header(tok: Tokenizer) -> StreamHeader:
    return StreamHeader(fingerprint=tok.fingerprint, sample_rate=int(tok.sample_rate), hop=int(tok.config.downsample),
                        codebooks=tok.num_codebooks, vocab_size=tok.vocab_size, causal=math.isfinite(tok.latency_ms))


def _reader(path: str) -> tuple[Any, Any]:
    """(read(n) returning what is available, the file to close or None) for a path or ``-`` (stdin)."""
    if path == "-":
        f = sys.stdin.buffer
        return (f.read1 if hasattr(f, "read1") else f.read), None
    f = open(path, "rb")  # noqa: SIM115 (closed by the caller)
    return f.read, f


def _pcm_chunks(path: str, rate: int) -> Iterator[torch.Tensor]:
    """float32 [n] chunks in [-1, 1]: raw s16le from stdin as it arrives, or a whole audio file in 1 s chunks."""
    if path != "-":
        import soundfile as sf

        try:
            data, sr = sf.read(path, dtype="float32", always_2d=True)
        except Exception as e:  # soundfile's own errors name no fix
            raise ValueError(f"cannot read {path} as audio ({e}): give a WAV/FLAC/OGG file, or `-` for raw 16-bit PCM "
                             "on stdin") from None
        x = torch.from_numpy(data.mean(axis=1))  # mono
        if sr != rate:
            import torchaudio.functional as AF

            x = AF.resample(x, sr, rate)
        x = x.clamp(-1.0, 1.0)
        step = int(FILE_CHUNK_S * rate)
        for i in range(0, len(x), step):
            yield x[i:i + step]
        return
    read, _ = _reader(path)
    odd = b""
    while True:
        data = read(READ_BYTES)
        if not data:
            break
        data = odd + data
        odd = data[len(data) - len(data) % 2:]
        pcm = np.frombuffer(data[: len(data) - len(odd)], dtype="<i2")
        if len(pcm):
            yield torch.from_numpy(pcm.astype(np.float32) / 32768.0)
    if odd:
        raise ValueError("raw input ended on an odd byte: `-` reads 16-bit little-endian mono PCM (sox ... -t raw "
                         "-e signed -b 16 -c 1 -)")


class _Writer:
    """Bytes to a file (written to a temporary name, renamed when complete) or to stdout, flushed per write."""

    def __init__(self, path: str):
        self.path = path
        if path == "-":
            self.f: IO[bytes] = sys.stdout.buffer
        else:
            target = Path(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, self.tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(self.tmp, 0o666 & ~umask)  # as open() would make it, not mkstemp's 0600
            self.f = os.fdopen(fd, "wb")
        self.bytes = 0

    def write(self, data: bytes) -> None:
        if data:
            self.f.write(data)
            self.f.flush()
            self.bytes += len(data)

    def close(self, complete: bool = True) -> None:
        """Rename the finished file into place; ``complete=False`` (an error): remove the partial one."""
        if self.path != "-":
            self.f.close()
            if complete:
                os.replace(self.tmp, self.path)
            else:
                os.unlink(self.tmp)


def codec_encode(tokenizer_dir: str | Path, inp: str, out: str, device: str = "cpu") -> dict[str, Any]:
    """Encode ``inp`` (audio file or ``-``) into the token stream ``out`` (file or ``-``); returns statistics."""
    tok = _audio_tokenizer(tokenizer_dir, device)
    header = _header(tok)
    writer = _Writer(out)
    try:
        writer.write(header.to_bytes())
        samples, frames = _encode_frames(tok, header, inp, writer, device)
    except BaseException:
        writer.close(complete=False)
        raise
    writer.close()
    return {"input": inp, "output": out, "seconds": samples / header.sample_rate, "frames": frames, "bytes": writer.bytes,
            "kbit_per_s": header.kbit_per_s, "streaming": header.causal, "latency_ms": tok.latency_ms}


def _encode_frames(tok: Tokenizer, header: StreamHeader, inp: str, writer: _Writer, device: str) -> tuple[int, int]:
    """Samples read and frames written: frame by frame (causal), or the whole input at once."""
    samples = frames = 0
    if header.causal:
        enc = tok.stream_encoder()
        for chunk in _pcm_chunks(inp, header.sample_rate):
            samples += len(chunk)
            tokens = enc(chunk)  # on the CPU: the encoder moves each frame's window to the model's device
            frames += len(tokens)
            writer.write(pack_frames(tokens.numpy(), header))
        tokens = enc.flush()
    else:  # the encoder looks ahead: the whole input, zero-padded to whole frames
        x = torch.cat([torch.zeros(0), *_pcm_chunks(inp, header.sample_rate)])
        samples = len(x)
        x = torch.nn.functional.pad(x, (0, -len(x) % header.hop))
        tokens = tok.encode(x[None].to(device))[0].cpu() if len(x) else torch.zeros(0, dtype=torch.long)
    writer.write(pack_frames(tokens.numpy(), header))
    return samples, frames + len(tokens)


def codec_decode(tokenizer_dir: str | Path, inp: str, out: str, device: str = "cpu") -> dict[str, Any]:
    """Decode the token stream ``inp`` (file or ``-``) into audio ``out`` (WAV file or ``-``, raw 16-bit PCM);
    ``StreamError`` for a stream of another codec, a corrupt or a cut-off one (after writing what was complete)."""
    tok = _audio_tokenizer(tokenizer_dir, device)
    read, handle = _reader(inp)
    source = "stdin" if inp == "-" else inp
    try:
        header = StreamHeader.read(read, source)
        if header.fingerprint != tok.fingerprint:
            raise StreamError(f"{source} was encoded by codec {header.fingerprint}, but {tokenizer_dir} is codec "
                              f"{tok.fingerprint}: decode with the tokenizer that encoded it")
        if header != _header(tok):
            raise StreamError(f"{source} has a corrupt header: it names codec {tok.fingerprint} with other settings "
                              f"({header} against {_header(tok)})")
        sink = _AudioSink(out, header.sample_rate)
        try:
            frames = _decode_frames(tok, header, read, sink, source)
        except StreamError:  # cut off or corrupt: the complete frames before it are written, then the error
            sink.close()
            raise
        except BaseException:
            sink.discard()
            raise
        sink.close()
    finally:
        if handle is not None:
            handle.close()
    return {"input": inp, "output": out, "frames": frames, "seconds": frames * header.hop / header.sample_rate,
            "kbit_per_s": header.kbit_per_s, "streaming": header.causal}


def _decode_frames(tok: Tokenizer, header: StreamHeader, read: Any, sink: _AudioSink, source: str) -> int:
    """Frames decoded into ``sink``. A stream cut inside a frame or with a corrupt frame: the frames before it are
    decoded and written, then ``StreamError``."""
    fb, buf, frames, error = header.frame_bytes, b"", 0, None
    dec = tok.stream_decoder() if header.causal else None
    held: list[torch.Tensor] = []  # a non-causal decoder's tokens, decoded at the end
    while error is None:
        data = read(READ_BYTES)
        if not data:
            break
        buf += data
        whole = len(buf) // fb * fb
        if whole:
            tokens = torch.from_numpy(unpack_frames(buf[:whole], header, strict=False))
            if len(tokens) < whole // fb:
                error = StreamError(f"{source} is corrupt: frame {frames + len(tokens)} holds a token beyond the "
                                    f"codec's {header.vocab_size} codes; the {frames + len(tokens)} frames before it "
                                    "were decoded")
            tokens = tokens[:, 0] if not tok.config.residual else tokens
            buf, frames = buf[whole:], frames + len(tokens)
            if dec is not None:
                sink.write(dec(tokens))
            else:
                held.append(tokens)
    if dec is not None:
        sink.write(dec.flush())
    elif held:
        sink.write(tok.decode(torch.cat(held)[None])[0].cpu())
    if error is None and buf:
        error = StreamError(f"{source} was cut off inside a frame ({len(buf)} of {fb} bytes); the {frames} complete "
                            "frames before it were decoded")
    if error is not None:
        raise error
    return frames


class _AudioSink:
    """float32 samples -> 16-bit PCM: raw to stdout (``-``) as they come, or a WAV file written when complete."""

    def __init__(self, path: str, rate: int):
        self.path, self.rate, self.parts = path, rate, []
        self.raw = _Writer(path) if path == "-" else None

    def write(self, y: torch.Tensor) -> None:
        pcm = (y.detach().cpu().clamp(-1, 1) * 32767).round().to(torch.int16).numpy()
        if self.raw is not None:
            self.raw.write(pcm.astype("<i2").tobytes())
        else:
            self.parts.append(pcm)

    def close(self) -> None:
        if self.raw is not None:
            return
        import soundfile as sf

        target = Path(self.path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        try:
            sf.write(str(tmp), np.concatenate([np.zeros(0, np.int16), *self.parts]), self.rate, subtype="PCM_16",
                     format="WAV")
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)

    def discard(self) -> None:
        """An error that is not the stream's: write nothing (a WAV) or stop (stdout)."""
        self.parts = []

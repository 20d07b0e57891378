"""Assemble docs/BENCHMARKS.md from the sections each bench script writes to docs/benchmarks/*.md.

Run: ``python -m bench.assemble_docs`` (after a bench has rewritten its section).
"""

import argparse

from bench.common import ROOT

ORDER = ["tokenizer_quality", "photo_codec", "photo_codec_vqvae", "speech_quality", "speech_codec_spoken_digits", "speech_codec_causal_spoken_digits", "speech_codec_causal_spoken_digits_seed1", "speech_codec_causal_annealed", "speech_codec_causal_128x4", "speech_codec_causal_128x3", "speech_codec_causal_64x2", "real_speech", "speech_phase_oracle", "codec_speed", "codec_speed_repeat", "demo_sampling", "demo_image", "demo_audio", "prior_sampling", "wavenet_generation", "pixelcnn_cache", "sparse_attention", "prior_throughput",
         "vs_transformers", "compression", "compression_folds", "compression_folds_validation", "speech_compress", "ood", "autoregressive_family", "tokenize_parallel", "data_scale", "gpu_check"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.splitlines()[0])
    ap.parse_args(argv)  # no options: --help only
    parts = sorted((ROOT / "docs" / "benchmarks").glob("*.md"), key=lambda p: (ORDER.index(p.stem) if p.stem in ORDER else 99, p.stem))
    text = ["# Benchmarks", "",
            "Every number here is produced by a script in `bench/`, run from the repository root as",
            "`python -m bench.NAME` (its command is given in each section); the raw results, with the machine",
            "described, are in `bench/results/*.json`. Ratios compare two things measured",
            "in the same run on the same machine. CPU runs were made on the 2-core development machine while other",
            "jobs were running, so absolute timings are noisy; ratios are more stable.", ""]
    for p in parts:
        section = p.read_text().strip()
        if section.startswith("# "):  # every section is a level-2 heading under the page title
            section = "#" + section
        text += [section, ""]
    (ROOT / "docs" / "BENCHMARKS.md").write_text("\n".join(text))
    print(f"wrote docs/BENCHMARKS.md from {len(parts)} section(s)")


if __name__ == "__main__":
    main()

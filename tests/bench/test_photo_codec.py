"""bench/photo_codec.py: the matched-rate search (JPEG through Pillow: at or under the target, the next quality
over it), the metrics of an identical image, a quick run's JSON (each codec's rows at the fixed and the
entropy-coded rate of a histogram prior fitted by counting), and peers whose tools are missing skipped with
the install command."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch

import bench.photo_codec as P


@pytest.fixture(scope="module")
def scenes4() -> torch.Tensor:
    return P.held_out("scenes", 64, 4, 0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny untrained fsq tokenizer (64x64 -> 16x16 tokens of 1000 codes) and a histogram prior over its tokens
    of a few scenes (fitted by counting, through the stage functions)."""
    from bench.common import train_row
    from pipelines.stages.tokenize import tokenize
    from tokenizers_vq import TokenizerConfig, build_tokenizer

    d = tmp_path_factory.mktemp("photo_codec")
    torch.manual_seed(0)
    tok = build_tokenizer(TokenizerConfig(modality="image", channels=3, image_size=64, quantizer="fsq",
                                          hidden_channels=16, num_res_blocks=0, latent_res_blocks=0,
                                          fsq_levels=[8, 5, 5, 5]))
    tok.save_pretrained(d / "tok")
    tokenize({"name": "scenes", "limit": 32}, d / "tokens", codec_dir=d / "tok", progress=False)
    train_row(d / "tokens", d / "prior", {"arch": "histogram"}, 0)
    return d


def test_jpeg_search_returns_the_largest_file_within_the_target(scenes4):
    jpeg = P.make_peers()[0]
    assert jpeg.name == "JPEG"
    img = P.to_uint8(scenes4[0])
    enc = lambda q: jpeg.encode(img, q, None)  # noqa: E731  (Pillow: no temp folder)
    settings = list(jpeg.settings)
    for target in (700, 1000, 1500):
        m = P.match_rate(enc, settings, target)
        assert not m.over_target and len(m.data) <= target
        assert m.next_bytes is not None and m.next_bytes > target
        assert len(enc(settings[m.index + 1])) == m.next_bytes > target  # the next quality up is over it
        assert m.tries <= 2 + math.ceil(math.log2(len(settings)))
        assert P.jpeg_header_bytes(m.data) < len(m.data)
    m = P.match_rate(enc, settings, 50)  # below JPEG's headers: kept at its smallest file, and said so
    assert m.over_target and m.index == 0 and len(m.data) > 50


def test_metrics_of_an_identical_image(scenes4):
    (m,) = P.image_metrics(scenes4[:1], scenes4[:1])
    assert m["psnr"] == pytest.approx(P.PSNR_CAP_DB)
    assert m["ssim"] == pytest.approx(1.0, abs=1e-5) and m["ms_ssim"] == pytest.approx(1.0, abs=1e-5)
    assert m["sharpness"] == pytest.approx(1.0) and m["colour_error"] == 0.0
    blurred = torch.nn.functional.avg_pool2d(scenes4[:1], 3, 1, 1)
    (b,) = P.image_metrics(blurred, scenes4[:1])
    assert b["sharpness"] < 0.9 and b["psnr"] < P.PSNR_CAP_DB
    (c,) = P.image_metrics((scenes4[:1] + torch.tensor([0.1, 0, 0])[:, None, None]).clamp(0, 1), scenes4[:1])
    assert 0.02 < c["colour_error"] < 0.04  # a red cast of ~0.1 shows in one channel of three


def test_quick_run_json_has_every_codec_at_both_rates(tiny, tmp_path):
    out = tmp_path / "res.json"
    res = P.main(["--tokenizer", str(tiny / "tok"), "--prior", str(tiny / "prior"), "--dataset", "scenes",
                  "--limit", "4", "--quick", "--json", str(out)])
    assert json.loads(out.read_text())["sets"][0]["n"] == 4
    assert (tmp_path / "res.png").is_file()
    s = res["sets"][0]
    assert s["fixed_bpp"] == pytest.approx(256 * math.log2(1000) / 4096)
    assert 0 < s["codebook_usage"] <= 1 and s["decode_check"] == {"checked": 4, "exact": True}
    for tname in ("fixed", "entropy"):
        codecs = s["targets"][tname]
        assert set(codecs) == {"vqgen", "JPEG", "WebP", "JPEG XL"}
        vq = codecs["vqgen"]["rows"]
        for name, c in codecs.items():
            if c.get("skipped"):
                continue
            assert len(c["rows"]) == 4 and c["over_target"] == sum(r.get("over_target", False) for r in c["rows"])
            for r, v in zip(c["rows"], vq):
                assert set(P.METRICS) <= set(r)
                if name != "vqgen":  # at or under the image's vqgen rate, unless flagged over it
                    assert r["target_bpp"] == v["bpp"]
                    # the matched bits (the payload by default) at or under the target unless flagged
                    assert (r["matched_bpp"] <= r["target_bpp"]) != r["over_target"]
                    assert r["matched_bpp"] <= r["bpp"]
    # the prior's code is shorter than the fixed-length code: an untrained tokenizer's tokens are far from uniform
    ent = s["targets"]["entropy"]["vqgen"]["rows"]
    for r in ent:
        assert r["bpp"] < s["fixed_bpp"]
        assert r["ideal_bpp"] <= r["bpp"] + 64 / 4096  # the payload within a few 32-bit words of the ideal
        assert r["file_bpp"] == pytest.approx(r["bpp"] + 8 * r["container_header_bytes"] / 4096)
    # both rates share one reconstruction
    assert [r["psnr"] for r in ent] == [r["psnr"] for r in s["targets"]["fixed"]["vqgen"]["rows"]]
    md = P.markdown(res)  # what write_results would write
    assert "| vqgen entropy-coded | JPEG XL |" in md and "Decode check" in md and "res.png" in md


def test_missing_peers_are_skipped_with_the_install_command(tiny, tmp_path, monkeypatch, capsys):
    import bench.common

    monkeypatch.setattr(bench.common, "ROOT", tmp_path)  # write_results and the picture go here
    monkeypatch.setattr(shutil, "which", lambda tool: None)
    monkeypatch.setattr("PIL.features.check", lambda name: False if name == "webp" else True)
    peers = {p.name: p for p in P.make_peers()}
    assert peers["JPEG"].missing is None  # Pillow: always there
    assert peers["WebP"].missing == "cwebp, dwebp not installed: apt-get install webp"
    assert peers["JPEG XL"].missing == "cjxl, djxl not installed: apt-get install libjxl-tools"
    res = P.main(["--tokenizer", str(tiny / "tok"), "--dataset", "scenes", "--limit", "2", "--out", "pc"])
    assert res["picture"] == "docs/benchmarks/pc.png" and (tmp_path / res["picture"]).is_file()
    md = (tmp_path / "docs/benchmarks/pc.md").read_text()
    assert "skipped: cjxl, djxl not installed: apt-get install libjxl-tools" in md
    assert json.loads((tmp_path / "bench/results/pc.json").read_text())["sets"][0]["n"] == 2
    codecs = res["sets"][0]["targets"]["fixed"]
    assert "entropy" not in res["sets"][0]["targets"]  # no prior: the fixed rate only
    assert codecs["JPEG XL"]["skipped"].endswith("apt-get install libjxl-tools") and "rows" not in codecs["JPEG XL"]
    assert codecs["WebP"]["skipped"].endswith("apt-get install webp")
    assert len(codecs["JPEG"]["rows"]) == 2
    assert "skipping JPEG XL: cjxl, djxl not installed: apt-get install libjxl-tools" in capsys.readouterr().out


def test_header_free_sizes():
    from PIL import Image

    img = np.zeros((64, 64, 3), np.uint8)
    img[16:48, 16:48] = (200, 40, 90)
    import io

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "WEBP", quality=50)
    data = buf.getvalue()
    assert P.webp_header_bytes(data) == 30  # RIFF 12 + chunk 8 + VP8 frame header 10
    assert P.jpeg_header_bytes(b"not a jpeg") is None

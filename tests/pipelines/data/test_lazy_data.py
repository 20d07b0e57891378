"""Arrow-backed image datasets are read row by row (never copied into a list), bad files are found where they are
read (in DataLoader workers too) and counted once, and worker processes give the same batches and tokens as none."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.data import DataSpec, SkipLog, load_data, report_skips
from pipelines.data.hub import ArrowColumn
from pipelines.data.image_io import ImageReadError

BROKEN = b"\x89PNG\r\n\x1a\n this is not an image"


def _saved_dataset(root, n: int = 24, broken: tuple[int, ...] = (5,)):
    """A ``save_to_disk`` folder of n 8x8 grey PNGs (row i has grey 10 i, label i % 3); rows in ``broken`` are
    corrupt PNG bytes."""
    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as HFImage

    cells = []
    for i in range(n):
        path = root / f"{i}.png"
        Image.new("L", (8, 8), 10 * i).save(path)
        cells.append({"bytes": BROKEN if i in broken else path.read_bytes(), "path": f"row{i}.png"})
    ds = Dataset.from_dict({"image": cells, "label": [i % 3 for i in range(n)]},
                           features=Features({"image": HFImage(), "label": ClassLabel(names=["a", "b", "c"])}))
    ds.save_to_disk(str(root / "saved"))
    return root / "saved"


def test_arrow_rows_are_read_on_demand_and_bad_ones_counted_once(tmp_path, caplog):
    folder = _saved_dataset(tmp_path)
    s = load_data(DataSpec(str(folder), modality="image", image_size=8, channels=1, test_fraction=0.25))
    assert isinstance(s.train.items, ArrowColumn) and isinstance(s.test.items, ArrowColumn)  # no list of bytes
    assert isinstance(s.train.labels, np.ndarray) and s.train.labels.dtype == np.int64
    assert s.class_names == ["a", "b", "c"] and len(s.train) + len(s.test) == 24
    seen = {}
    with caplog.at_level(logging.WARNING, logger="vqgen.data"):
        for ds in (s.train, s.test):
            for i in range(len(ds)):
                item = ds.read_item(i)
                cell = ds.items[i]
                if item is None:
                    assert cell["path"] == "row5.png"
                    continue
                row = int(cell["path"][3:-4])
                x, y = item
                assert x.shape == (1, 8, 8) and x.dtype == torch.float32
                assert x.mean().item() == pytest.approx(10 * row / 255, abs=1e-6) and int(y) == row % 3
                seen[row] = True
        assert len(seen) == 23
        assert caplog.text == ""  # nothing is said until the run reports
        assert report_skips(s) == 1
    assert "skipped 1 unreadable image file(s)" in caplog.text and "row5.png: cannot decode image" in caplog.text


def test_a_bad_row_stands_aside_for_the_next_readable_one():
    cells = [Image.new("L", (4, 4), v) for v in (0, 100, 200)]
    items = []
    for img in cells:
        import io

        buf = io.BytesIO()
        img.save(buf, format="PNG")
        items.append(buf.getvalue())
    items[1] = BROKEN
    from pipelines.data import EncodedImageDataset

    skips = SkipLog("demo", "image")
    ds = EncodedImageDataset(items, [0, 1, 2], 4, 1, skips=skips)
    x, y = ds[1]
    assert int(y) == 2 and x.mean().item() == pytest.approx(200 / 255, abs=1e-6)
    assert ds.read_item(1) is None and len(skips.skipped()) == 1
    with pytest.raises(ImageReadError, match="cannot decode image"):
        EncodedImageDataset(items, [0, 1, 2], 4, 1)[1]  # no log: the error itself
    strict = EncodedImageDataset(items, [0, 1, 2], 4, 1, skips=SkipLog("demo", "image", strict=True))
    with pytest.raises(ImageReadError, match=r"demo: <bytes>: cannot decode image.*drop --strict"):
        strict[1]
    every_bad = EncodedImageDataset([BROKEN] * 3, [0, 0, 0], 4, 1, skips=SkipLog("demo", "image"))
    with pytest.raises(ValueError, match="demo: no readable image files found"):
        every_bad[0]


def test_training_batches_are_the_same_with_worker_processes(tmp_path):
    """``--num-workers 2`` decodes in two processes: the same batches for the seed as decoding in the loop's own,
    and the unreadable row the workers met is still counted (once) in the parent's report."""
    from accelerate import Accelerator

    from pipelines.training.config import TrainConfig
    from pipelines.training.prepare import make_loader

    folder = _saved_dataset(tmp_path, n=40, broken=(7,))
    batches = {}
    for workers in (0, 2):
        s = load_data(DataSpec(str(folder), modality="image", image_size=8, channels=1, test_split=None,
                               test_fraction=0.1, augment="flip"))
        cfg = TrainConfig(out=str(tmp_path / "run"), batch_size=8, num_workers=workers, seed=3)
        loader = make_loader(s.train, cfg, Accelerator(cpu=True))
        batches[workers] = [(x.clone(), y.clone()) for x, y in loader]
        assert report_skips(s) == (1 if 7 in {int(c["path"][3:-4]) for c in s.train.items} else 0)
    assert len(batches[0]) == len(batches[2]) == 4
    for (x0, y0), (x2, y2) in zip(batches[0], batches[2]):
        assert torch.equal(x0, x2) and torch.equal(y0, y2)


def test_tokenize_with_workers_writes_the_same_shards_less_the_bad_row(tmp_path, caplog):
    from pipelines.cli import main

    folder = _saved_dataset(tmp_path, n=30, broken=(4, 13))
    heads = {}
    for workers in (0, 2):
        out = tmp_path / f"tok{workers}"
        with caplog.at_level(logging.WARNING, logger="vqgen.data"):
            caplog.clear()
            rc = main(["tokenize", "--raw", "--levels", "256", "--dataset", str(folder),
                       "--image-size", "8", "--channels", "1", "--shard-rows", "4", "--num-workers", str(workers),
                       "--out", str(out), "--quiet"])
        assert rc == 0
        warnings = [r.getMessage() for r in caplog.records if r.name == "vqgen.data" and r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "skipped 2 unreadable image file(s)" in warnings[0]
        heads[workers] = json.loads((out / "tokens.json").read_text())
    for key in ("counts", "shards"):
        assert heads[0][key] == heads[2][key]
    assert sum(heads[0]["counts"].values()) == 28
    for info in heads[0]["shards"].values():  # shards cover the kept rows one after another
        starts = [f["start"] for f in info["files"]]
        assert starts == list(np.cumsum([0] + [f["rows"] for f in info["files"]])[:-1])
    from pipelines.data.tokens import load_tokens

    tokens, labels = load_tokens(tmp_path / "tok0", "train")
    grey = tokens.materialize().float().mean(dim=(1, 2, 3)) if tokens.materialize().dim() == 4 else \
        tokens.materialize().float().flatten(1).mean(1)
    assert not any(abs(g - 40) < 1 or abs(g - 130) < 1 for g in grey.tolist())  # rows 4 and 13 are not there


def test_score_and_reconstruct_with_workers_match_none(tmp_path, caplog):
    """``vqgen score`` and ``vqgen reconstruct`` take ``--num-workers``: the same CSV and the same metrics as reading
    in their own process, with the unreadable row left out (score) and counted once."""
    from pipelines.cli import main
    from tokenizers_vq import TokenizerConfig, build_tokenizer

    folder = _saved_dataset(tmp_path, n=30, broken=(4, 13))
    assert main(["tokenize", "--raw", "--levels", "256", "--dataset", str(folder), "--image-size", "8", "--channels",
                 "1", "--out", str(tmp_path / "tok"), "--quiet"]) == 0
    assert main(["train-prior", "--tokens", str(tmp_path / "tok"), "--arch", "histogram", "--out",
                 str(tmp_path / "prior"), "--quiet", "--reference-fraction", "0"]) == 0
    tok = tmp_path / "tokenizer"
    build_tokenizer(TokenizerConfig(modality="image", autoencoder="vqvae", image_size=8, channels=1,
                                    hidden_channels=8)).eval().save_pretrained(tok)
    csvs, metrics = {}, {}
    for workers in (0, 2):
        with caplog.at_level(logging.WARNING, logger="vqgen.data"):
            caplog.clear()
            out = tmp_path / f"scores{workers}.csv"
            assert main(["score", "--prior", str(tmp_path / "prior"), "--dataset", str(folder), "--image-size", "8",
                         "--channels", "1", "--split", "train", "--num-workers", str(workers), "--out", str(out),
                         "--quiet"]) == 0
            warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
            assert len(warnings) == 1 and "skipped" in warnings[0]
        csvs[workers] = out.read_text()
        rec = tmp_path / f"rec{workers}"
        assert main(["reconstruct", "--tokenizer", str(tok), "--dataset", str(folder), "--image-size", "8",
                     "--channels", "1", "--num-workers", str(workers), "--n", "2", "--out", str(rec), "--quiet"]) == 0
        metrics[workers] = json.loads((rec / "metrics.json").read_text())
    assert csvs[0] == csvs[2]
    assert len(csvs[0].splitlines()) - 1 == 30 - 2 - round(30 * 0.1)  # train split less the held-out tenth, less 2
    assert metrics[0] == metrics[2]

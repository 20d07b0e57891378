"""Local folders of image or audio files: ``root/<label>/<file>``; subfolder names become the labels.

Images (``IMAGE_EXTS``) go through ``datasets``' imagefolder: ``(x float32 [C, H, W] in [0, 1], label int64)``.
Audio (``AUDIO_EXTS``) may also be split as ``root/<train_split>/<label>/<file>`` and
``root/<test_split>/<label>/<file>``: ``(x float32 [clip_samples] in [-1, 1], label int64)``; files longer than a
clip are read whole and give many windows (see ``AudioClipDataset``).
"""

from __future__ import annotations

from pathlib import Path

from .audio_io import holdout, holds_out_tails, make_audio_splits
from .hub import load_hf_images
from .spec import AUDIO_EXTS, IMAGE_EXTS, DataSpec, Splits


def _list_audio(root: Path) -> tuple[list[Path], list[str]]:
    """Audio files under root (sorted) and the label of each: its first folder below root ('' at root)."""
    files = sorted(f for f in root.rglob("*") if f.is_file() and f.suffix.lower() in AUDIO_EXTS
                   and not f.name.startswith("."))
    return files, [f.relative_to(root).parts[0] if len(f.relative_to(root).parts) > 1 else "" for f in files]


def load_audio_folder(spec: DataSpec) -> Splits:
    """A local folder in audiofolder layout: ``root/<label>/<file>``, or ``root/<split>/<label>/<file>`` with
    ``spec.train_split`` (and ``spec.test_split``) folders. Labels are the sorted label-folder names; files
    directly in the label root are unlabelled (-1). Without a test folder, ``test_fraction`` is held out: whole
    files, or the last ``test_fraction`` of every file when there are too few files for that (``holds_out_tails``)."""
    root = Path(spec.name)
    split_layout = (root / spec.train_split).is_dir()
    train_root = root / spec.train_split if split_layout else root
    files, names = _list_audio(train_root)
    if not files:
        raise ValueError(f"{train_root}: no audio files ({', '.join(sorted(AUDIO_EXTS))}) found")
    test_root = root / spec.test_split if split_layout and spec.test_split else None
    test_files, test_names = _list_audio(test_root) if test_root and test_root.is_dir() else ([], [])
    class_names = sorted({n for n in names + test_names if n})
    index = {n: i for i, n in enumerate(class_names)}
    labels = [index.get(n, -1) for n in names]
    tails = False
    if test_files:
        train = ([str(f) for f in files], labels)
        test = ([str(f) for f in test_files], [index.get(n, -1) for n in test_names])
    elif holds_out_tails([str(f) for f in files], spec.test_fraction, spec.clip_samples, spec.sample_rate):
        train, test, tails = ([str(f) for f in files], labels), ([], []), True  # a few long recordings
    else:
        tr, te = holdout(len(files), spec.test_fraction, spec.seed)
        train = ([str(files[i]) for i in tr], [labels[i] for i in tr])
        test = ([str(files[i]) for i in te], [labels[i] for i in te])
    return make_audio_splits(train, test, class_names, spec, str(root), tails=tails)


def load_image_folder(spec: DataSpec) -> Splits:
    """A local folder in imagefolder layout (``root/<label>/<file>``), through ``datasets``' imagefolder."""
    from datasets import load_dataset

    folder = Path(spec.name)
    files = [f for f in folder.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTS]
    if not files:
        raise ValueError(f"{folder}: no image files ({', '.join(sorted(IMAGE_EXTS))}) found")
    dd = load_dataset("imagefolder", data_dir=str(folder))
    return load_hf_images(spec, dd, str(folder))

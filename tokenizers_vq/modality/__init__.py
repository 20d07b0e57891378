"""Modalities: what kind of signal a codec tokenizes, as one object that owns everything that differs
between kinds (layout and range checks, default sizes, file reading and writing, previews, metrics, raw
quantization, the model card's wording and the ONNX export's axes). ``codec.modality`` is one of these.

```python
from tokenizers_vq.modality import AUDIO, IMAGE, get_modality

m = get_modality("image")          # IMAGE; ValueError naming the known ones for another name
str(m), m == "image", hash(m) == hash("image")   # "image", True, True: it stands in for its name
m.input_shape({"channels": 1, "image_size": 32})  # (1, 32, 32)
```

``base.py`` holds the ``Modality`` base class and the registry; ``image.py`` and ``audio.py`` one modality
each. A new modality is a subclass registered with ``register_modality`` (plus its data readers in
``pipelines.data``).
"""

from .audio import AUDIO, AudioFileError, AudioModality
from .base import Modality, get_modality, modality_for_ndim, modality_names, register_modality
from .image import IMAGE, ImageModality

# Registration order is the order names are listed in messages ("image", "audio").
register_modality(IMAGE)
register_modality(AUDIO)

__all__ = ["AUDIO", "IMAGE", "AudioFileError", "AudioModality", "ImageModality", "Modality", "get_modality",
           "modality_for_ndim", "modality_names", "register_modality"]

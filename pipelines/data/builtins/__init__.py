"""The built-in datasets: one module each, registered in ``pipelines.data.DATASETS`` by name with its modality and a
one-line description (every module of this folder is imported on first use, so a new built-in is one new file)."""

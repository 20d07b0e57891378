"""The steps of ``bash bench/gpu_check.sh`` (the prepared GPU check), one module each, run as
``python -m bench.gpu.NAME``; ``bench.gpu.stepkit`` is what they share."""

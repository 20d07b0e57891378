"""vqgen's benchmarks: one script per measured claim, each run from the repository root as
``python -m bench.NAME`` (``--help`` for its options); results go to ``bench/results/NAME.json`` and
``docs/benchmarks/NAME.md``, which ``python -m bench.assemble_docs`` joins into docs/BENCHMARKS.md.

What several scripts share (the machine they record, timing, writing results, recipe overrides) is in
``bench.common``. The package may import ``pipelines``, ``prior``, ``tokenizers_vq`` and ``vqgen_io``;
nothing in those packages imports it (tests/test_layering.py).
"""

"""bench/tokenize_parallel.py --quick on a tiny tokenizer: every layout runs through the CLI (two processes as torchrun
starts them), the shards agree across layouts (the script raises otherwise) and the speed-ups are the stage times'
ratios. The timings themselves are not checked: a quick run on a shared CPU says nothing about speed."""

from __future__ import annotations

import pytest

from bench import tokenize_parallel as tp


def test_quick_run_compares_layouts_with_the_same_shards(tmp_path):
    res = tp.main(["--quick", "--hidden-channels", "4", "--work", str(tmp_path)])
    rows = {r["layout"]: r for r in res["rows"]}
    assert [r["processes"] for r in res["rows"]] == [1, 1, 2] and res["same_shards"] and res["shards"] >= 2
    one, two = rows["1 process, default threads"], rows["2 processes, 1 thread each"]
    assert res["speedup_stage"] == pytest.approx(one["stage_s"] / two["stage_s"], rel=1e-2)
    assert all(r["command_s"] > r["stage_s"] > 0 for r in res["rows"])
    k = res["kill_and_resume"]  # killed at half-way: the finished shards kept, the rest encoded, the same folder
    assert k["same_shards"] and k["kept_on_resume"] == k["finished_when_killed"] >= res["shards"] // 2
    assert k["kept_on_resume"] + k["encoded_on_resume"] == res["shards"] and k["encoded_on_resume"] >= 1


def test_the_stage_time_is_read_from_the_main_process_log():
    assert tp.STAGE.search("INFO vqgen.tokenize: tokenize: 18 shards by 2 processes in 3.25 s")[3] == "3.25"
    assert tp.STAGE.search("INFO vqgen.tokenize: tokenize: 4 shards by 1 process in 0.50 s")[2] == "1"
    assert tp.COUNTS.search("tokenize: 7 shards encoded, 11 kept from an earlier run (checksums verified)").groups() \
        == ("7", "11")

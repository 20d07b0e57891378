"""bench/common.py: the one ``key=value`` override syntax of every bench (YAML values, as recipe files will hold
them), with unknown keys refused by name; and where results are written."""

from __future__ import annotations

import pytest

from bench.common import ROOT, parse_overrides, parse_value


@pytest.mark.parametrize("text,value", [
    ("8", 8), ("-3", -3), ("2e-3", 0.002), ("1E3", 1000.0), ("0.5", 0.5), (".5", 0.5), ("010", 10),
    ("true", True), ("True", True), ("false", False), ("null", None),
    ("[500, 500]", [500, 500]), ("[16,8,8]", [16, 8, 8]), ("{a: 1}", {"a": 1}),
    ("fixed", "fixed"), ("logistic_mixture", "logistic_mixture"), ("16,8,8", "16,8,8"), ("a: b: c", "a: b: c"),
])
def test_values_read_as_yaml(text, value):
    got = parse_value(text)
    assert got == value and type(got) is type(value)


def test_keys_and_errors():
    assert parse_overrides(None) == {} and parse_overrides([]) == {}
    assert parse_overrides(["max-seconds=600", "fsq_levels=[16, 8, 8]"]) == {"max_seconds": 600,
                                                                           "fsq_levels": [16, 8, 8]}
    assert parse_overrides(["x=a=b"]) == {"x": "a=b"}  # the first '=' splits
    with pytest.raises(ValueError, match=r"--set: 'steps' is not key=value \(e\.g\. --set steps=2000"):
        parse_overrides(["steps"])
    with pytest.raises(ValueError, match=r"--set: '=3' is not key=value"):
        parse_overrides(["=3"])
    with pytest.raises(ValueError, match=r"'lr' is not a field --prior-args may set; known: batch_size, steps"):
        parse_overrides(["lr=1"], flag="--prior-args", known={"steps", "batch_size"})


def test_tokenizer_quality_refuses_a_key_that_is_no_tokenizer_field(monkeypatch):
    from bench import tokenizer_quality

    monkeypatch.setattr("sys.argv", ["tokenizer_quality", "--quick", "--set", "fsq_level=[8,8]"])
    with pytest.raises(ValueError, match=r"'fsq_level' is not a field --set may set; known: .*fsq_levels"):
        tokenizer_quality.main()


def test_root_is_the_repository():
    assert (ROOT / "bench" / "common.py").is_file() and (ROOT / "pyproject.toml").is_file()

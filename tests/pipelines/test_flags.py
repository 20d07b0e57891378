"""The command line generated from the config dataclasses: every flag has help text from its field, section flags
reach the model only when given and only for a component that has them, recipes and flags combine."""

from __future__ import annotations

import pytest

from pipelines.cli import main, parse_command
from pipelines.commands import COMMANDS, prior_model_fields, tokenizer_model_fields
from prior import ARCHS
from tokenizers_vq import AUTOENCODERS, QUANTIZERS


def _groups(name):
    from pipelines.cli import _groups

    return _groups(name, COMMANDS[name])


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_flag_has_help_text(name: str) -> None:
    for group in _groups(name):
        for flag in group.flags:
            assert flag.help.strip(), f"vqgen {name} --{flag.name.replace('_', '-')} has no help text"


def test_every_component_field_is_a_flag() -> None:
    names = {f.name for g in _groups("train-prior") for f in g.flags}
    assert set(ARCHS.field_owners()) <= names
    names = {f.name for g in _groups("train-tokenizer") for f in g.flags}
    assert set(QUANTIZERS.field_owners()) | set(AUTOENCODERS.field_owners()) <= names


def test_section_flags_reach_the_model_only_when_given() -> None:
    _, a, _ = parse_command(["train-prior", "--tokens", "t", "--out", "o", "--arch", "made", "--made-hidden", "64",
                             "32", "--label-dropout", "0.2"])
    fields = prior_model_fields(a)
    assert fields["made_hidden"] == (64, 32) and fields["label_dropout"] == 0.2
    assert "made_order" not in fields and "n_layer" not in fields  # the arch's own defaults apply
    _, a, _ = parse_command(["train-tokenizer", "--dataset", "mnist5k", "--out", "o", "--fsq-levels", "8,6,5"])
    assert tokenizer_model_fields(a)["fsq_levels"] == [8, 6, 5]  # the comma spelling still works


def test_a_flag_of_another_component_is_a_clear_error(capsys: pytest.CaptureFixture) -> None:
    assert main(["train-prior", "--tokens", "t", "--out", "o", "--arch", "lstm", "--n-layer", "3"]) == 2
    err = capsys.readouterr().err
    assert "--n-layer is a setting of prior architecture" in err and "transformer" in err and "'lstm'" in err
    assert main(["train-tokenizer", "--dataset", "mnist5k", "--out", "o", "--quantizer", "fsq",
                 "--codebook-size", "64"]) == 2
    assert "--codebook-size is a setting of quantizer" in capsys.readouterr().err


def test_flags_override_a_recipe(tmp_path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("command: train-prior\narch: transformer\nn_layer: 3\nsteps: 50\nlr: 0.01\n")
    _, a, _ = parse_command(["train-prior", "--config", str(recipe), "--tokens", "t", "--out", "o", "--steps", "7"])
    assert a.steps == 7 and a.lr == 0.01 and prior_model_fields(a)["n_layer"] == 3
    assert "n_layer" in a.explicit and "d_model" not in a.explicit


def test_help_and_unknown_commands(capsys: pytest.CaptureFixture) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)
    assert main(["train-pior"]) == 2
    assert "unknown command 'train-pior'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train-prior", "--tokens", "t", "--out", "o", "--arch", "nope"])


def test_print_config_leaves_the_family_lr_to_the_family(tmp_path, capsys) -> None:
    """Without --lr, the printed recipe leaves lr out (a written one would count as given and override the spectral
    codec's 1e-3 when read back); with --lr it is written and read back as given."""
    from pipelines.cli import print_config

    base = ["train-tokenizer", "--dataset", "tones", "--modality", "audio", "--out", str(tmp_path / "x")]
    for extra, written in (([], False), (["--lr", "3e-3"], True)):
        name, parsed, _ = parse_command([*base, *extra])
        print_config(name, parsed)
        recipe = tmp_path / "r.yaml"
        recipe.write_text(capsys.readouterr().out)
        assert ("\nlr: " in recipe.read_text()) is written
        _, again, _ = parse_command([*base[:1], "--config", str(recipe), "--out", str(tmp_path / "y")])
        assert ("lr" in again.explicit) is written and again.values["lr"] == (3e-3 if written else 2e-3)

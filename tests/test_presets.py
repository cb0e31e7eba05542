"""The DDPM job's presets and defaults: the bare command trains the recipe the ablation chose, a
preset is a typed set of fields (a misspelt key fails), and --help says what each trains."""

import dataclasses

import pytest

from hw4.errors import HW4Error
from jobs import cli, ddpm_config, train_ddpm
from jobs.ddpm_config import DDPMJobConfig


def parse(argv):
    return cli.parse_config(DDPMJobConfig, argv, ddpm_config.SMOKE, train_ddpm.__doc__,
                            ddpm_config.PRESETS, ddpm_config.PRESET_HELP)


def test_the_bare_command_trains_the_chosen_recipe():
    cfg = parse([])
    assert {k: getattr(cfg, k) for k in ddpm_config.RECIPE} == ddpm_config.RECIPE
    assert ddpm_config.RECIPE == {"prediction": "v", "loss_weight": "min-snr", "lr_schedule": "cosine"}


@pytest.mark.parametrize("preset", ["full", "small", "smoke"])
def test_every_preset_trains_the_recipe_and_sets_only_its_fields(preset):
    cfg = parse(["--preset", preset])
    assert {k: getattr(cfg, k) for k in ddpm_config.RECIPE} == ddpm_config.RECIPE
    bare = dataclasses.asdict(parse([]))
    changed = {k for k, v in dataclasses.asdict(cfg).items() if bare[k] != v}
    assert changed == {k for k, v in ddpm_config.PRESETS[preset].items() if bare[k] != v}
    assert cfg.smoke_test == (preset == "smoke")  # a smoke preset never registers


def test_an_explicit_flag_beats_the_preset():
    assert parse(["--preset", "small", "--lr", "3e-4"]).lr == 3e-4
    assert parse(["--preset", "small"]).lr == ddpm_config.SMALL["lr"]


def test_a_preset_with_a_misspelt_key_fails():
    bad = {**ddpm_config.PRESETS, "typo": {"base_chanels": 8}}
    with pytest.raises(HW4Error, match="base_chanels"):
        cli.parse_config(DDPMJobConfig, [], ddpm_config.SMOKE, train_ddpm.__doc__, bad)


def test_help_names_each_preset_and_the_recipe(capsys):
    with pytest.raises(SystemExit):
        parse(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    for preset in ddpm_config.PRESETS:
        assert preset in out
    assert "--prediction v --loss-weight min-snr --lr-schedule cosine" in out
    assert "--base-channels 16" in out  # what small trains


def test_a_misspelt_preset_name_is_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        parse(["--preset", "smal"])
    assert exc.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_the_bare_sweep_trains_the_recipe_too():
    from jobs import tune_ddpm_schedule
    cfg = cli.parse_config(tune_ddpm_schedule.DDPMSweepConfig, [], tune_ddpm_schedule.SMOKE,
                           tune_ddpm_schedule.__doc__)
    space = {"prediction": cfg.predictions, "loss_weight": cfg.loss_weights,
             "lr_schedule": cfg.lr_schedules}
    assert space == {k: (v,) for k, v in ddpm_config.RECIPE.items()}

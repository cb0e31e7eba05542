"""The DDPM job's presets and defaults: the bare command trains the recipe the ablation chose, a
preset is a typed set of fields (a misspelt key fails), and --help says what each trains."""

import dataclasses
import json

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
    bare = cli.flat(DDPMJobConfig, dataclasses.asdict(parse([])))
    changed = {k for k, v in cli.flat(DDPMJobConfig, dataclasses.asdict(cfg)).items() if bare[k] != v}
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


def test_the_job_config_nests_the_unet_config_with_flat_flags():
    """The U-Net's fields live once, in hw4's UNetConfig: the job holds one as ``model`` (no copy
    of its fields), its flags stay flat, and a checkpoint's config saved flat by an older version
    still loads and counts as unchanged on a rerun."""
    from hw4.models.unet import UNetConfig

    unet_fields = {f.name for f in dataclasses.fields(UNetConfig)}
    assert not unet_fields & {f.name for f in dataclasses.fields(DDPMJobConfig)}
    cfg = parse(["--base-channels", "24", "--channel-mults", "1", "2", "--no-conditional"])
    assert isinstance(cfg.model, UNetConfig) and cfg.model.base_channels == 24
    assert cfg.model.channel_mults == (1, 2) and cfg.unet().num_classes is None
    assert parse([]).unet().num_classes == ddpm_config.NUM_CLASSES
    saved = json.loads(json.dumps(dataclasses.asdict(cfg)))  # as config.json has it: nested
    assert cli.config_from_state(DDPMJobConfig, {"config": saved}) == cfg
    old = cli.flat(DDPMJobConfig, saved)  # as an older version saved it: flat
    assert "model" not in old and old["base_channels"] == 24
    assert cli.config_from_state(DDPMJobConfig, {"config": old}) == cfg
    with pytest.raises(SystemExit):  # no flag for the fields the job sets itself
        parse(["--num-classes", "3"])


def test_a_rerun_over_a_flat_saved_config_is_not_a_change(tmp_path):
    from jobs import runs

    cfg = parse(["--name", "r", "--storage-path", str(tmp_path)])
    run = tmp_path / "r" / "checkpoint_000000"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(cli.flat(DDPMJobConfig, json.loads(json.dumps(
        dataclasses.asdict(cfg))))))
    runs.check_rerun(cfg)  # the same settings, saved the old way: accepted
    with pytest.raises(HW4Error, match=f"--base-channels {cfg.model.base_channels} -> 16"):
        runs.check_rerun(parse(["--name", "r", "--storage-path", str(tmp_path),
                                "--base-channels", "16"]))

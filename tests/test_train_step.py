"""The training step without host syncs: seeded device-side randomness, the same loss as the
textbook step, metrics accumulated on the device and read once per log interval."""

import copy

import torch

from hw4 import data, diffusion, epochs, precision, train
from hw4.diffusion import DiffusionSchedule
from hw4.models.unet import UNet, UNetConfig

TINY = UNetConfig(base_channels=8, channel_mults=(1, 2), attention_resolutions=(2,), num_heads=2,
                  groups=4, dropout=0.0)


def test_draws_are_seeded_and_on_the_data_device():
    x0 = torch.zeros(5, 1, 4, 4)
    a = train.draw_timesteps_and_noise(x0, 100, torch.Generator().manual_seed(7))
    b = train.draw_timesteps_and_noise(x0, 100, torch.Generator().manual_seed(7))
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    assert a[0].device == x0.device and a[1].shape == x0.shape and a[0].max() < 100


def test_step_loss_equals_the_denoising_loss_on_the_same_t_and_noise():
    torch.manual_seed(0)
    model = UNet(TINY)
    sched = DiffusionSchedule.named("cosine", 100)
    x0 = torch.rand(4, 1, 28, 28) * 2 - 1
    t, noise = train.draw_timesteps_and_noise(x0, 100, torch.Generator().manual_seed(3))
    with torch.no_grad():
        model.train()
        expected = diffusion.training_losses(model, sched, x0, t, noise, "eps").mean()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    got = train.ddpm_train_step(model, sched, x0, opt, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(got["loss"], expected)
    assert got["loss"].device == x0.device and got["grad_norm"].ndim == 0


def test_metrics_read_once_per_interval_equal_per_step_means():
    values = [torch.tensor(float(v)) for v in (1, 2, 3, 4, 5, 6, 7)]
    it = iter(values)
    batches = [(torch.zeros(b, 1), torch.zeros(b)) for b in (2, 2, 2, 2, 2, 2, 1)]
    logs = []
    out = epochs.run_epoch(batches, lambda x, y: {"loss": next(it)}, log_every=3,
                          on_log=lambda i, m: logs.append((i, m["loss"])))
    assert logs == [(3, 2.0), (6, 3.5)]  # running means at steps 3 and 6
    assert abs(out["loss"] - (2 * sum(range(1, 7)) + 7) / 13) < 1e-9  # batch-size weighted


def test_foreach_ema_equals_per_tensor_lerp():
    torch.manual_seed(0)
    model = UNet(TINY)
    ema = train.EMA(model, decay=0.9)
    reference = {k: v.clone() for k, v in ema.shadow.items()}
    for step in range(1, 4):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        ema.update(model)
        d = min(0.9, (1 + step) / (10 + step))
        for k, v in model.state_dict().items():
            reference[k] = reference[k].lerp(v, 1 - d) if v.dtype.is_floating_point else v.clone()
    for k in reference:
        torch.testing.assert_close(ema.shadow[k], reference[k])


def test_tensor_batches_shard_and_reshuffle():
    x, y = torch.arange(20.0)[:, None], torch.arange(20)
    ranks = [data.TensorBatches(x, y, 3, seed=1, rank=r, world=2) for r in range(2)]
    seen = [torch.cat([b[1] for b in loader]) for loader in ranks]
    assert len(ranks[0]) == 3 and all(len(s) == 9 for s in seen)  # 10 per rank, drop_last
    assert not set(seen[0].tolist()) & set(seen[1].tolist())  # disjoint shards
    first = copy.deepcopy(seen[0])
    ranks[0].set_epoch(1)
    assert not torch.equal(torch.cat([b[1] for b in ranks[0]]), first)
    for xb, yb in ranks[0]:
        assert torch.equal(xb[:, 0].long(), yb)  # images and labels stay paired


def test_autocast_choice_follows_the_measurement():
    assert precision.autocast_dtype("auto", "cpu", 128, flags={"avx2", "avx512f"}) is None  # no native bf16
    assert precision.autocast_dtype("auto", "cpu", 128, flags={"avx512f", "avx512_bf16"}) is torch.bfloat16
    assert precision.autocast_dtype("auto", "cpu", 128, flags={"amx_bf16"}) is torch.bfloat16
    assert precision.autocast_dtype("auto", "cpu", 128, flags=set()) is None  # not Linux: unknown, fp32
    assert precision.autocast_dtype("auto", "cuda", 128) is None
    assert precision.autocast_dtype("auto", "cuda", 512) is torch.bfloat16
    assert precision.autocast_dtype("bf16", "cpu", 1) is torch.bfloat16
    assert precision.autocast_dtype("fp32", "cuda", 4096) is None


def test_channels_last_only_where_it_was_measured_faster():
    assert precision.channels_last("cpu", None)  # fp32 on a CPU
    assert not precision.channels_last("cpu", torch.bfloat16)  # oneDNN's NCHW bf16 kernels win
    assert not precision.channels_last("cuda", None) and not precision.channels_last("cuda", torch.bfloat16)


def test_max_steps_cuts_an_epoch_short_and_means_cover_only_those_steps():
    batches = [(torch.full((2, 1), float(i)), torch.zeros(2)) for i in range(5)]
    seen = []

    def step(x, y):
        seen.append(float(x[0, 0]))
        return {"loss": x.mean()}

    out = epochs.run_epoch(batches, step, max_steps=3)
    assert seen == [0.0, 1.0, 2.0] and out["loss"] == 1.0
    seen.clear()
    epochs.run_epoch(batches, step, max_steps=99)  # a cap beyond the epoch takes the whole epoch
    assert len(seen) == 5


def test_a_wall_clock_budget_becomes_whole_steps_within_the_runs_epochs():
    assert epochs.steps_in_budget(60, 0.5, cap=1000) == 120
    assert epochs.steps_in_budget(60, 0.5, cap=100) == 100  # --epochs bounds it
    assert epochs.steps_in_budget(0.1, 0.5, cap=100) == 1  # a run takes at least one step
    clock, calls = [0.0], []

    def step():  # each call takes 0.25 s of a clock the test owns; the warm-up's 1.0 s more
        calls.append(1)
        clock[0] += 0.25 if len(calls) > 2 else 1.0

    per_step = epochs.seconds_per_step(step, steps=3, warmup=2, clock=lambda: clock[0])
    assert len(calls) == 5 and per_step == 0.25  # warm-up calls run, untimed


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f amx_bf16\n\nprocessor\t: 1\n")
    assert {"avx2", "amx_bf16"} <= precision.cpu_flags(str(info))
    assert precision.cpu_flags(str(tmp_path / "missing")) == set()

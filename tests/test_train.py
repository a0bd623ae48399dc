"""The training loop: profiles, devices, checkpoints, EMA sampling weights, finished-run reuse, CUDA + AMP."""
from __future__ import annotations

import json

import pytest
import torch
from tiny_generator import TinyDenoiser, TinyPair, build, tiny_table

from cmraudit.errors import ConfigError, PluginError, RunError
from cmraudit.training.checkpoint import list_checkpoints
from cmraudit.training.device import amp_dtype, inference_dtype, select_device
from cmraudit.training.loop import PROFILE_DEFAULTS, TrainConfig, TrainResult, load_trained, train
from cmraudit.training.privacy import DPConfig

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (AMP runs on CUDA only)")


def _sample(gen, table, seed=0):
    n = 4
    return gen.sample(table.masks[:n], table.vendor_indices()[:n], table.pathology_indices()[:n],
                      generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------------------- config
def test_profiles_merge_generator_hints_and_overrides():
    assert TrainConfig.for_profile("smoke").steps == PROFILE_DEFAULTS["smoke"]["steps"]
    config = TrainConfig.for_profile("smoke", TinyDenoiser, {"batch_size": "8"})
    assert (config.steps, config.batch_size) == (6, 8)  # the generator's hint, then the CLI's string override
    assert TrainConfig.for_profile("standard").batch_size > TrainConfig.for_profile("quick").batch_size
    with pytest.raises(ConfigError, match="unknown setting"):
        TrainConfig.for_profile("quick", overrides={"stepz": 3})
    with pytest.raises(ConfigError, match="profile"):
        TrainConfig.for_profile("huge")
    with pytest.raises(ConfigError, match="steps"):
        TrainConfig(steps=0).validate()


def test_device_selection_and_amp_choice(monkeypatch):
    assert select_device("cpu").type == "cpu"
    assert select_device(None).type == ("cuda" if torch.cuda.is_available() else select_device(None).type)
    cpu = torch.device("cpu")
    # CPU autocast only where bf16 has matrix units (AMX): elsewhere it is slower than fp32
    monkeypatch.setenv("CMRAUDIT_CPU_BF16", "0")
    assert amp_dtype(cpu) is None and inference_dtype(cpu) is None
    monkeypatch.setenv("CMRAUDIT_CPU_BF16", "1")
    assert amp_dtype(cpu) == torch.bfloat16 and inference_dtype(cpu) == torch.bfloat16
    assert amp_dtype(cpu, enabled=False) is None  # train.amp = false
    monkeypatch.delenv("CMRAUDIT_CPU_BF16")
    has_amx = bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())
    assert (amp_dtype(cpu) == torch.bfloat16) == has_amx
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            select_device("cuda")
    with pytest.raises(ConfigError, match="--device"):
        select_device("tpu")


# --------------------------------------------------------------------------------------------------- runs
def test_training_writes_checkpoints_summary_and_learns(tmp_path):
    seen = []
    table = tiny_table()
    config = TrainConfig(steps=30, batch_size=6, checkpoint_every=10, device="cpu")
    gen = build(TinyDenoiser)
    result = train(gen, table, config, tmp_path, callback=lambda step, total, logs: seen.append((step, total, logs)))
    assert [s for s, _, _ in seen] == list(range(1, 31)) and {t for _, t, _ in seen} == {30}
    assert seen[-1][2]["batch"] == 6.0
    assert result.logs["loss"] < 0.7 * seen[0][2]["loss"]  # the denoiser learned something
    assert [s for s, _ in list_checkpoints(tmp_path / "checkpoints")] == [20, 30]  # newest two kept
    summary = json.loads((tmp_path / "training.json").read_text())
    assert TrainResult.from_dict(summary) == result
    assert (summary["steps"], summary["dp"], summary["device"]) == (30, None, "cpu")
    for _, path in list_checkpoints(tmp_path / "checkpoints"):
        state = torch.load(path, weights_only=True)  # plain data only: safe to open
        assert state["step"] in (20, 30) and "rng" in state and "runner" in state
    assert not gen.nets["net"].training  # returned ready to sample


def test_load_trained_rebuilds_the_ema_sampling_weights(tmp_path):
    table = tiny_table()
    gen = build(TinyDenoiser)
    train(gen, table, TrainConfig(steps=8, batch_size=4, checkpoint_every=4, ema_decay=0.5), tmp_path)
    loaded = load_trained(tmp_path, TinyDenoiser)
    assert torch.equal(_sample(gen, table), _sample(loaded, table))
    assert not loaded.nets["net"].training
    state = torch.load(tmp_path / "checkpoints" / "step_00000008.pt", weights_only=True)
    ema, raw = state["runner"]["ema"]["nets"]["net"], state["nets"]["net"]
    for key, value in loaded.nets["net"].state_dict().items():
        assert torch.equal(value, ema[key])
    assert any(not torch.equal(ema[k], raw[k]) for k in raw)  # EMA differs from the last iterate


def test_finished_run_returns_the_recorded_result_without_training(tmp_path):
    table = tiny_table()
    config = TrainConfig(steps=4, batch_size=4, checkpoint_every=2)
    first = train(build(TinyPair), table, config, tmp_path)
    calls = []
    fresh = build(TinyPair, seed=123)  # different initial weights: must be replaced by the trained ones
    again = train(fresh, table, config, tmp_path, callback=lambda **kw: calls.append(kw))
    assert again == first and calls == []
    assert torch.equal(_sample(fresh, table), _sample(load_trained(tmp_path, TinyPair), table))


def test_rerun_with_other_settings_is_refused(tmp_path):
    table = tiny_table()
    train(build(TinyDenoiser), table, TrainConfig(steps=2, batch_size=2), tmp_path)
    with pytest.raises(RunError, match="train"):
        train(build(TinyDenoiser), table, TrainConfig(steps=3, batch_size=2), tmp_path)
    with pytest.raises(RunError, match="dp"):
        train(build(TinyDenoiser), table, TrainConfig(steps=2, batch_size=2), tmp_path,
              dp=DPConfig(noise_multiplier=1.0))


def test_unfinished_run_cannot_be_loaded(tmp_path):
    with pytest.raises(RunError, match="has not finished"):
        load_trained(tmp_path, TinyDenoiser)


def test_optimising_an_unknown_network_names_the_generator(tmp_path):
    class Wrong(TinyDenoiser):
        name = "tiny-wrong"

        def training_step(self, batch, runner):
            runner.optimize("decoder", self.nets["net"](batch.images, batch.masks, batch.vendor,
                                                        batch.pathology).mean())
            return {}

    with pytest.raises(PluginError, match="tiny-wrong.*decoder"):
        train(build(Wrong), tiny_table(), TrainConfig(steps=1, batch_size=2), tmp_path)


def test_load_trained_finds_registered_generators_by_name(tmp_path, register_plugin):
    from cmraudit.hookspecs import hookimpl

    class Plugin:
        @staticmethod
        @hookimpl
        def cmraudit_register_generators(register):
            register(TinyDenoiser)

    register_plugin(Plugin, name="tiny-test-plugin")
    gen = build(TinyDenoiser)
    train(gen, tiny_table(), TrainConfig(steps=2, batch_size=2), tmp_path)
    assert isinstance(load_trained(tmp_path), TinyDenoiser)


@pytest.mark.parametrize("private", [False, True], ids=["plain", "dp"])
def test_cpu_bf16_training_is_recorded_and_finite(tmp_path, monkeypatch, private):
    """bf16 autocast on the CPU (default where AMX exists; forced here so any CPU runs it, only slower)."""
    monkeypatch.setenv("CMRAUDIT_CPU_BF16", "1")
    table = tiny_table(size=16)
    gen = build(TinyDenoiser, size=16)
    dp = DPConfig(noise_multiplier=1.0) if private else None
    result = train(gen, table, TrainConfig(steps=4, batch_size=4, checkpoint_every=2, device="cpu"), tmp_path, dp=dp)
    assert json.loads((tmp_path / "training.json").read_text())["amp"] == "bfloat16"
    assert all(torch.isfinite(torch.tensor(v)) for v in result.logs.values())
    monkeypatch.setenv("CMRAUDIT_CPU_BF16", "0")
    resumed = train(build(TinyDenoiser, size=16), table, TrainConfig(steps=4, batch_size=4, checkpoint_every=2,
                                                                      device="cpu"), tmp_path, dp=dp)
    assert resumed.logs == result.logs  # a finished run is read back whatever this machine's precision


# --------------------------------------------------------------------------------------------------- CUDA
@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("private", [False, True], ids=["plain", "dp"])
def test_cuda_training_with_amp(tmp_path, private):
    table = tiny_table(size=32)
    gen = build(TinyDenoiser, size=32)
    dp = DPConfig(noise_multiplier=1.0) if private else None
    result = train(gen, table, TrainConfig(steps=4, batch_size=4, checkpoint_every=2, device="cuda"), tmp_path, dp=dp)
    summary = json.loads((tmp_path / "training.json").read_text())
    expected = "bfloat16" if torch.cuda.is_bf16_supported() else (None if private else "float16")
    assert summary["amp"] == expected and result.device.startswith("cuda")
    assert all(torch.isfinite(torch.tensor(v)) for v in result.logs.values())
    images = _sample(gen, table)
    assert images.is_cuda and images.shape == (4, 1, 32, 32) and torch.isfinite(images).all()
    loaded = load_trained(tmp_path, TinyDenoiser, device="cpu")
    assert torch.allclose(_sample(loaded, table), images.cpu(), atol=1e-4)


@pytest.mark.cuda
@needs_cuda
def test_fp16_without_bf16_uses_a_grad_scaler(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert amp_dtype(torch.device("cuda")) == torch.float16
    assert amp_dtype(torch.device("cuda"), private=True) is None
    result = train(build(TinyDenoiser), tiny_table(), TrainConfig(steps=3, batch_size=4, device="cuda"), tmp_path)
    assert json.loads((tmp_path / "training.json").read_text())["amp"] == "float16"
    assert all(torch.isfinite(torch.tensor(v)) for v in result.logs.values())


def test_dp_plan_is_recorded_under_the_same_keys(tmp_path):
    """The PrivatePlan (a frozen dataclass) writes the checkpoint's ``dp`` entry and training.json's
    ``dp_mechanism`` under the keys resuming and the report read."""
    import dataclasses

    from cmraudit.training.privacy import PrivatePlan

    table = tiny_table(n_patients=6)
    train(build(TinyDenoiser), table, TrainConfig(steps=2, batch_size=2, checkpoint_every=2), tmp_path,
          dp=DPConfig(noise_multiplier=1.1))
    summary = json.loads((tmp_path / "training.json").read_text())
    assert summary["dp_mechanism"] == {"private_networks": ["net"], "per_network_noise_multiplier": 1.1,
                                       "expected_batch": pytest.approx(2.0), "grad_sample_mode": "fast"}
    state = torch.load(tmp_path / summary["checkpoint"], weights_only=True)
    assert set(state["dp"]) == {"noise_multiplier", "sample_rate", "delta", "history"}
    assert (state["dp"]["noise_multiplier"], state["dp"]["sample_rate"]) == (1.1, pytest.approx(2 / 6))
    assert dataclasses.fields(PrivatePlan) and PrivatePlan.__dataclass_params__.frozen

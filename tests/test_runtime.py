"""The 6Bit runtime: quantized checkpoints, per-block routing, the delta cache, PDR, calibration, one compilation."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from convert import convert_checkpoint
from convert.export import diffusers_tensors, write_diffusers_folder
from sixbit_jax.calibrate import fit, replay_skip_rule
from sixbit_jax.checkpoint import abstract_params, load_checkpoint
from sixbit_jax.config import CogVideoXConfig
from sixbit_jax.errors import ConfigError, InputError
from sixbit_jax.layers import LinearRuntime, QuantDense
from sixbit_jax.models import CogVideoXTransformer3D
from sixbit_jax.models.block_control import (BF16, CALIBRATE, INT8, NVFP4, PDR, SKIP, BlockControl, BlockReport,
                                             DeltaCache, run_controlled_blocks)
from sixbit_jax.quant.spec import QuantSpec
from sixbit_jax.quant.model import quantize_model
from sixbit_jax.runtime import (RunSummary, RuntimeConfig, StepStats, calibration_fields, choose_routes,
                                fields_for_run, init_state, resample_schedule, update_state)
from sixbit_jax.sampling import SamplerSettings, _denoise, sample

SMALL = dict(num_layers=3, num_attention_heads=2, attention_head_dim=64, time_embed_dim=128, text_embed_dim=32,
             max_text_seq_length=8, in_channels=4, out_channels=4, patch_size=2, sample_frames=2, sample_height=8,
             sample_width=8, temporal_compression_ratio=1)


def small_config(**overrides) -> CogVideoXConfig:
    return CogVideoXConfig(**{**SMALL, **overrides})


@pytest.fixture(scope="module")
def float_model():
    return CogVideoXTransformer3D(small_config(), dtype=jnp.float32, rngs=nnx.Rngs(3))


@pytest.fixture(scope="module")
def quantized(float_model):
    """float_model with NVFP4 block linears (quantizing is not free: one copy for the module)."""
    return quantize_model(float_model)


def stream_shapes(model, video_tokens: int, text_tokens: int, batch: int = 1):
    d = model.config.inner_dim
    return (batch, video_tokens, d), (batch, text_tokens, d)


def controlled_forward(model, possible_routes: tuple[int, ...] = (SKIP, BF16, INT8, NVFP4, PDR, CALIBRATE)):
    """model(latents, text, t, control=BlockControl(routes, cache)) as one compiled program with the routes and the
    cache traced: every call after the first reuses it (eager, each forward of the quantized model takes seconds).
    Only `possible_routes` are compiled (each branch costs compile time)."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(state, latents, text, t, routes, cache):
        control = BlockControl(routes, cache, possible_routes=possible_routes)
        return nnx.merge(graphdef, state)(latents, text, t, control=control)

    return lambda latents, text, t, routes, cache: forward(state, latents, text, t,
                                                           jnp.asarray(routes, jnp.int32), cache)


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    return (jnp.asarray(rng.standard_normal((1, 2, 4, 8, 8)), jnp.float32),
            jnp.asarray(rng.standard_normal((1, 8, 32)), jnp.float32),
            jnp.asarray(rng.standard_normal((1, 8, 32)), jnp.float32))


# ------------------------------------------------------------------------------------------------ checkpoints
@pytest.mark.parametrize("name", ["cogvideox-2b", "cogvideox-5b"])
def test_quantized_weights_are_at_most_a_3_32th_of_bf16(name):
    cfg = CogVideoXConfig.named(name)
    nbytes = lambda tree: sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))  # noqa: E731
    ratio = nbytes(abstract_params(cfg, "bf16")) / nbytes(abstract_params(cfg, "bf16", QuantSpec()))
    assert ratio >= 3.32, f"{name}: quantized weights are 1/{ratio:.3f} of bf16"


def test_quantized_checkpoint_round_trips_and_matches_in_memory_quantization(float_model, quantized, inputs, tmp_path):
    cfg = float_model.config
    params = nnx.to_pure_dict(nnx.state(float_model))
    folder = write_diffusers_folder(tmp_path / "transformer", cfg, diffusers_tensors(cfg, params, np.float32))
    ckpt = convert_checkpoint(folder, tmp_path / "q", dtype="fp32", quant=QuantSpec(), progress=False)
    loaded = load_checkpoint(ckpt)
    assert loaded.quant == QuantSpec() and isinstance(loaded.transformer_blocks.attn1.to_q, QuantDense)
    assert loaded.transformer_blocks.norm1.linear.weight_only
    in_memory = quantized
    jax.tree.map(np.testing.assert_array_equal, nnx.to_pure_dict(nnx.state(loaded)),
                 nnx.to_pure_dict(nnx.state(in_memory)))
    latents, text, _ = inputs
    t = jnp.array([500])
    np.testing.assert_array_equal(loaded(latents, text, t), in_memory(latents, text, t))


# ------------------------------------------------------------------------------------------------ linear paths
def test_pdr_falls_back_to_bf16_only_on_outlier_inputs(quantized):
    layer = quantized.transformer_blocks.attn1.to_q  # stacked over blocks: take block 0
    state = jax.tree.map(lambda x: x[0], nnx.state(layer))
    single = nnx.merge(nnx.graphdef(layer), state)
    rng = np.random.default_rng()
    calm = jnp.asarray(rng.standard_normal((16, 128)), jnp.float32)
    spiky = calm.at[3, 7].set(500.0)  # max|x| / mean|x| far above 25
    for x, expected_path, fallback in ((calm, "int8", 0.0), (spiky, "bf16", 1.0)):
        runtime = LinearRuntime(path="pdr")
        y = single(x, runtime)
        np.testing.assert_array_equal(y, single(x, LinearRuntime(path=expected_path)))
        assert [float(f) for f in runtime.fallbacks] == [fallback]


def test_quantized_paths_stay_close_to_float(float_model, quantized, inputs):
    """One forward: each quantized path within a stated relative L1 error of the float model."""
    latents, text, _ = inputs
    t = jnp.array([400])
    reference = np.asarray(nnx.jit(lambda m: m(latents, text, t))(float_model), np.float64)
    bounds = {BF16: 0.08, INT8: 0.08, NVFP4: 0.15}  # W4A16 / W4A8 / W4A4 on random weights
    layers = float_model.config.num_layers
    state = init_state(layers, stream_shapes(float_model, 2 * 16, 8), RuntimeConfig(mode="int8"))
    forward = controlled_forward(quantized, tuple(bounds))
    for route, bound in bounds.items():
        out, report = forward(latents, text, t, [route] * layers, state.cache)
        err = np.abs(np.asarray(out, np.float64) - reference).sum() / np.abs(reference).sum()
        assert err < bound, f"route {route}: relative L1 error {err:.3f}"
        assert np.asarray(report.gamma).min() > 0


def test_calibrate_route_measures_nvfp4_sensitivity_at_the_block_output(float_model, inputs):
    """E = |Y_nvfp4 - Y|₁ / |Y|₁ of a one-block model: the calibrate route's report against the outputs of the same
    block run on the bf16 (W4A16) route and on the NVFP4 route; the per-linear mean stays as a second report."""
    one_block = quantize_model(CogVideoXTransformer3D(small_config(num_layers=1), dtype=jnp.float32,
                                                      rngs=nnx.Rngs(5)))
    latents, text, _ = inputs
    text_tokens, video = one_block.patch_embed(text, latents)
    temb_act = jax.nn.silu(one_block.time_embedding(
        jnp.asarray(np.random.default_rng(1).standard_normal((1, one_block.config.inner_dim)), jnp.float32)))
    tables = one_block.positional_tables(2, 8, 8)
    video = video + tables.sincos
    block_def, state = nnx.split(one_block.transformer_blocks)
    run_block = lambda block, streams, runtime: block(*streams, temb_act, tables, runtime)  # noqa: E731
    cache = DeltaCache.create(1, ((1, 1, 1),) * 2, jnp.float32, placeholders=True)

    @jax.jit
    def run(route):
        return run_controlled_blocks(block_def, state, (video, text_tokens), run_block,
                                     BlockControl(jnp.reshape(route, (1,)), cache,
                                                  possible_routes=(BF16, NVFP4, CALIBRATE)))

    (y_video, y_text), _ = run(jnp.int32(BF16))
    (q_video, q_text), _ = run(jnp.int32(NVFP4))
    _, report = run(jnp.int32(CALIBRATE))
    l1 = lambda x: np.abs(np.asarray(x, np.float64)).sum()  # noqa: E731
    want = (l1(q_video - y_video) + l1(q_text - y_text)) / (l1(y_video) + l1(y_text))
    assert float(report.nvfp4_error[0]) == pytest.approx(want, rel=1e-4)
    assert 0 < float(report.linear_error[0]) and float(report.linear_error[0]) != pytest.approx(want, rel=1e-2)
    # PDR's statistic of each activation-quantized linear's input, in call order: q, k and v read the same
    # normalised tokens, and the first one is that input's max|x| / mean|x| computed here
    ratios = np.asarray(report.outlier_ratio[0])
    assert ratios.shape == (len(type(one_block.transformer_blocks).ACTIVATION_LINEARS),)
    assert ratios[0] == ratios[1] == ratios[2] and np.all(ratios > 1)
    block = nnx.merge(block_def, jax.tree.map(lambda x: x[0], state))
    norm_video, norm_text, _, _ = block.norm1(video, text_tokens, temb_act)
    x = np.abs(np.concatenate([np.asarray(norm_text), np.asarray(norm_video)], axis=1))
    assert ratios[0] == pytest.approx(x.max() / x.mean(), rel=1e-5)
    assert np.isnan(np.asarray(run(jnp.int32(BF16))[1].outlier_ratio)).all()  # measured only when calibrating


def test_pdr_threshold_is_solved_for_the_fallback_target_and_read_back(tmp_path):
    rng = np.random.default_rng(3)
    steps, layers = 6, 2
    ratios = rng.lognormal(3, 0.4, (steps, layers, 3))
    stats = [StepStats(np.zeros((steps, layers)), rng.uniform(0.1, 1, (steps, layers)),
                       rng.uniform(0.1, 1, (steps, layers)), np.zeros((steps, layers)),
                       rng.uniform(0.1, 1, (steps, layers)), np.zeros((steps, layers)), ratios)]
    cal = fit(stats, target_fallback=0.1, linear_names=["a", "b", "c"])
    assert (ratios > cal.outlier_ratio).mean() == pytest.approx(0.1, abs=1 / ratios.size)
    assert list(cal.info["outlier_ratio_percentiles"]) == ["a", "b", "c"]
    assert cal.info["outlier_ratio_percentiles"]["b"][-1] == pytest.approx(ratios[..., 1].max())
    assert "PDR threshold" in cal.report() and "10% of refresh linears" in cal.report()
    path = cal.save(tmp_path / "cal.json")
    assert calibration_fields(path)["outlier_ratio"] == pytest.approx(cal.outlier_ratio)
    assert fields_for_run(path, "int8", tdc=True) == {"tau_c": cal.tau_c, "outlier_ratio": cal.outlier_ratio}
    with pytest.raises(ConfigError, match="fallback fraction"):
        fit(stats, target_fallback=1.5)


# ------------------------------------------------------------------------------------------------ routing
def _fake_report(state, *, change: float, gamma: float = 0.2) -> BlockReport:
    layers = state.gamma.shape[0]
    full = lambda v: jnp.full((layers,), v, jnp.float32)  # noqa: E731
    return BlockReport(jnp.ones((layers,), bool), full(gamma), full(change), full(0.0), full(0.0), full(0.0),
                       state.cache)


def _simulate(cfg: RuntimeConfig, num_steps: int, *, change: float, layers: int = 2):
    state = init_state(layers, ((1, 4, 8), (1, 2, 8)), cfg)
    routes = []
    for step in range(num_steps):
        r = choose_routes(cfg, state, jnp.int32(step), num_steps)
        assert set(np.asarray(r).tolist()) <= set(cfg.possible_routes), "a route the sampler did not compile"
        routes.append(np.asarray(r))
        state = update_state(state, r, _fake_report(state, change=change))
    return np.stack(routes)


def test_constant_delta_skips_at_most_max_skips_in_a_row_and_never_on_always_compute_steps():
    cfg = RuntimeConfig(mode="int8", tdc=True, tau_c=0.1, max_skips=2)
    routes = _simulate(cfg, 12, change=0.0)  # the delta never changes: every allowed skip is taken
    column = routes[:, 0]
    assert list(column[:11]) == [INT8, INT8, SKIP, SKIP, PDR, SKIP, SKIP, PDR, SKIP, SKIP, PDR]
    assert column[-1] != SKIP and (routes[:2] != SKIP).all()
    assert (routes == routes[:, :1]).all()
    runs = max(len(s) for s in "".join("s" if r == SKIP else "." for r in column).split("."))
    assert runs == 2


def test_changing_delta_accumulates_error_and_stops_skipping():
    cfg = RuntimeConfig(mode="int8", tdc=True, tau_c=0.25, max_skips=5, pdr=False)
    column = _simulate(cfg, 10, change=0.1)[:, 0]
    # r = 0.1: skip while E_acc + r <= 0.25 -> two skips (0.1, then 0.2), then a compute resets E_acc.
    assert list(column[2:8]) == [SKIP, SKIP, INT8, SKIP, SKIP, INT8]
    assert not (_simulate(cfg, 10, change=0.3) == SKIP).any()


def test_routing_flips_when_the_predicted_error_crosses_tau_q():
    cfg = RuntimeConfig(mode="sixbit", alpha=(1.0, 1.0), beta=(0.0, 0.0), tau_q=0.5)
    state = init_state(2, ((1, 4, 8), (1, 2, 8)), cfg)
    assert list(choose_routes(cfg, state, jnp.int32(0), 10)) == [INT8, INT8], "no Γ yet: INT8"
    state = state._replace(gamma=jnp.array([0.4, 0.6]), gamma_valid=jnp.array([True, True]))
    assert list(choose_routes(cfg, state, jnp.int32(3), 10)) == [NVFP4, INT8]
    state = state._replace(gamma=jnp.array([0.6, 0.4]))
    assert list(choose_routes(cfg, state, jnp.int32(3), 10)) == [INT8, NVFP4]
    state = state._replace(gamma_valid=jnp.array([False, True]))
    assert list(choose_routes(cfg, state, jnp.int32(3), 10)) == [INT8, NVFP4], "skipped at t-1: INT8"


def test_routing_takes_one_tau_q_per_block():
    cfg = RuntimeConfig(mode="sixbit", alpha=(1.0, 1.0), beta=(0.0, 0.0), tau_q=(0.3, 0.7))
    state = init_state(2, ((1, 4, 8), (1, 2, 8)), cfg)._replace(gamma=jnp.array([0.5, 0.5]),
                                                                gamma_valid=jnp.array([True, True]))
    assert list(choose_routes(cfg, state, jnp.int32(3), 10)) == [INT8, NVFP4]
    with pytest.raises(ConfigError, match="tau_q has 3 entries but alpha has 2"):
        RuntimeConfig(mode="sixbit", alpha=(1.0, 1.0), beta=(0.0, 0.0), tau_q=(0.3, 0.7, 0.1))


def test_sixbit_mode_needs_a_calibration():
    with pytest.raises(ConfigError, match="sixbit calibrate"):
        RuntimeConfig(mode="sixbit")


def test_summary_counts_skips_as_zero_bits():
    routes = np.array([[INT8, NVFP4], [SKIP, PDR]])
    fallbacks = np.array([[0, 0], [0, 3]], np.float32)
    zeros = np.zeros((2, 2), np.float32)
    summary = RunSummary.from_stats(StepStats(routes, zeros, zeros, fallbacks, zeros, zeros), 6)
    pdr_bits = (16 * 3 + 8 * 3) / 6
    assert summary.bits_with_skips == pytest.approx((8 + 4 + 0 + pdr_bits) / 4)
    assert summary.bits_without_skips == pytest.approx((8 + 4 + pdr_bits) / 3)
    assert summary.skip_fraction == 0.25 and summary.bf16_fallbacks == 3


# bfloat16 caches take float32's path through the model (no scale); test_bf16_delta_cache_rounds_to_bf16 covers them
@pytest.mark.parametrize("cache_dtype, tolerance", [("float32", 1e-5), ("float8_e4m3fn", 8e-2)])
def test_a_skipped_block_adds_the_delta_its_last_compute_cached(quantized, inputs, cache_dtype, tolerance):
    """Model level: a compute caches Δ = Y - X (and reports r against the old Δ); skipping from the same input with
    that cache reproduces the computed output, to the cache dtype's precision."""
    latents, text, _ = inputs
    cfg, t = quantized.config, jnp.array([500])
    layers = cfg.num_layers
    empty = init_state(layers, stream_shapes(quantized, 2 * 4 * 4, 8),
                       RuntimeConfig(mode="calibrate", cache_dtype=cache_dtype))
    forward = controlled_forward(quantized, (SKIP, BF16))
    computed, first = forward(latents, text, t, [BF16] * layers, empty.cache)
    assert float(first.gamma.min()) > 0
    assert all(float(jnp.abs(first.cache.read(i)[0]).sum()) > 0 for i in range(layers)), "every block caches Δ"
    expected = np.asarray(computed, np.float64)
    for skipped_block in range(layers):
        routes = [BF16] * layers
        routes[skipped_block] = SKIP
        out, report = forward(latents, text, t, routes, first.cache)
        err = np.abs(np.asarray(out, np.float64) - expected).sum() / np.abs(expected).sum()
        assert err < tolerance, f"skipping block {skipped_block}: relative L1 error {err:.2e}"
        for new, old in zip((*report.cache.deltas, report.cache.scale), (*first.cache.deltas, first.cache.scale)):
            # a skip leaves its cache entry as it was
            np.testing.assert_array_equal(np.asarray(new[skipped_block]), np.asarray(old[skipped_block]))
    halved = first.cache._replace(scale=first.cache.scale * 0.5)
    _, again = forward(latents, text, t, [BF16] * layers, halved)
    np.testing.assert_allclose(np.asarray(again.change), 1.0, rtol=tolerance)  # |Δ - Δ/2| / |Δ/2|


def test_bf16_delta_cache_rounds_to_bf16():
    cache = DeltaCache.create(2, ((1, 4, 8), (1, 2, 8)), jnp.bfloat16)
    rng = np.random.default_rng()
    video = jnp.asarray(rng.standard_normal((1, 4, 8)) * 1e3, jnp.float32)
    text = jnp.asarray(rng.standard_normal((1, 2, 8)), jnp.float32)
    got_video, got_text = cache.write(jnp.int32(0), (video, text), keep=jnp.bool_(False)).read(jnp.int32(0))
    for got, want in ((got_video, video), (got_text, text)):
        np.testing.assert_allclose(got, want, rtol=2**-8)


def test_fp8_delta_cache_scales_large_deltas_instead_of_overflowing():
    cache = DeltaCache.create(2, ((1, 4, 8), (1, 2, 8)), jnp.float8_e4m3fn)
    rng = np.random.default_rng()
    video = jnp.asarray(rng.standard_normal((1, 4, 8)) * 1e4, jnp.float32)  # far beyond E4M3's 448
    text = jnp.asarray(rng.standard_normal((1, 2, 8)) * 1e-3, jnp.float32)
    cache = cache.write(jnp.int32(1), (video, text), keep=jnp.bool_(False))
    got_video, got_text = cache.read(jnp.int32(1))
    for got, want in ((got_video, video), (got_text, text)):  # E4M3: 3 mantissa bits; subnormals below amax / 2^15
        np.testing.assert_allclose(got, want, rtol=2**-4, atol=float(jnp.abs(want).max()) * 2**-15)
    assert float(jnp.abs(cache.read(jnp.int32(0))[0]).max()) == 0, "other layers untouched"


# ------------------------------------------------------------------------------------------------ sampler
def test_sampler_with_the_runtime_compiles_once_and_obeys_the_cache_rules(float_model, quantized, inputs):
    latents, text, negative = inputs
    cfg = RuntimeConfig(mode="int8", tdc=True, tau_c=1e9, max_skips=2)  # skip whenever the rules allow
    settings = SamplerSettings(num_steps=9, guidance_scale=3.0, seed=0)
    before = _denoise._cache_size()
    first = sample(quantized, text, negative, latents=latents, settings=settings, runtime=cfg)
    second = sample(quantized, text, negative, latents=latents + 1, settings=dataclasses.replace(settings, seed=5),
                    runtime=cfg)
    never = sample(quantized, text, negative, latents=latents, settings=settings,  # another tau_c and PDR threshold
                   runtime=dataclasses.replace(cfg, tau_c=-1.0, outlier_ratio=3.0))
    assert _denoise._cache_size() == before + 1, "the whole run must be one compiled program, reused"
    assert never.summary.skip_fraction == 0, "the new tau_c took effect without a new compile"
    routes = np.asarray(first.stats.route)
    assert routes.shape == (9, float_model.config.num_layers)
    assert (routes[:2] != SKIP).all() and (routes[-1] != SKIP).all()
    for column in routes.T:
        runs = "".join("s" if r == SKIP else "." for r in column).split(".")
        assert max(map(len, runs)) <= 2
    assert first.summary.skip_fraction > 0.3 and np.isfinite(np.asarray(second.latents, np.float32)).all()
    change = np.asarray(first.stats.change)
    assert np.isnan(change[0]).all() and np.isnan(change[routes == SKIP]).all(), "r not measured"
    assert (change[1:][routes[1:] != SKIP] > 0).all(), "r measured on every compute after the first"


def test_delta_cache_without_skips_changes_nothing(quantized, inputs):
    latents, text, negative = inputs
    settings = SamplerSettings(num_steps=9, guidance_scale=3.0)  # the compile-once test's program, reused
    plain = sample(quantized, text, negative, latents=latents, settings=settings, runtime=RuntimeConfig(mode="int8"))
    cached = sample(quantized, text, negative, latents=latents, settings=settings,
                    runtime=RuntimeConfig(mode="int8", tdc=True, tau_c=-1.0, max_skips=2))
    assert cached.summary.skip_fraction == 0
    np.testing.assert_array_equal(np.asarray(cached.latents), np.asarray(plain.latents))


def test_replaying_a_recorded_schedule_reproduces_the_run(float_model, quantized, inputs):
    latents, text, negative = inputs
    settings = SamplerSettings(num_steps=7, guidance_scale=3.0)
    layers = float_model.config.num_layers
    live = RuntimeConfig(mode="sixbit", alpha=(1.0,) * layers, beta=(0.0,) * layers, tau_q=0.3, tdc=True, tau_c=1e9)
    recorded = sample(quantized, text, negative, latents=latents, settings=settings, runtime=live)
    routes = np.asarray(recorded.stats.route)
    assert {SKIP, PDR} <= set(routes.ravel().tolist()), "the recording should exercise skips and refreshes"
    replay = RuntimeConfig(mode="replay", schedule=resample_schedule(routes, 7, layers))
    replayed = sample(quantized, text, negative, latents=latents, settings=settings, runtime=replay)
    np.testing.assert_array_equal(np.asarray(replayed.stats.route), routes)
    np.testing.assert_array_equal(np.asarray(replayed.latents), np.asarray(recorded.latents))
    with pytest.raises(ConfigError, match="schedule"):
        sample(quantized, text, negative, latents=latents, runtime=replay,
               settings=dataclasses.replace(settings, num_steps=8))


def test_resampled_schedule_keeps_the_mix():
    routes = np.array([[INT8, NVFP4, SKIP], [PDR, SKIP, NVFP4]])
    stretched = np.array(resample_schedule(routes, 4, 6))
    assert stretched.shape == (4, 6)
    np.testing.assert_array_equal(stretched[0], [INT8, INT8, NVFP4, NVFP4, SKIP, SKIP])
    np.testing.assert_array_equal(stretched[-1], [PDR, PDR, SKIP, SKIP, NVFP4, NVFP4])


def test_calibration_rollouts_measure_the_delta_change_and_the_output_sensitivity(quantized, inputs):
    """tau_c is solved from r on calibration rollouts, so the calibrate mode caches deltas although it never skips.
    With output_sensitivity each step also records E at the model output per block: checked at the first step
    against forwards of the same CFG batch with that block alone on NVFP4 and every block on bf16 activations."""
    from sixbit_jax.schedulers import make_schedule

    latents, text, negative = inputs
    result = sample(quantized, text, negative, latents=latents,
                    settings=SamplerSettings(num_steps=4, guidance_scale=3.0),
                    runtime=RuntimeConfig(mode="calibrate", output_sensitivity=True))
    change = np.asarray(result.stats.change)
    assert result.summary.skip_fraction == 0 and np.isnan(change[0]).all()
    assert (change[1:] > 0).all() and np.isfinite(change[1:]).all()
    layers = quantized.config.num_layers
    measured = np.asarray(result.stats.output_error)
    assert measured.shape == (4, layers) and (measured > 0).all() and np.isfinite(measured).all()
    config = quantized.default_scheduler_config()
    t0 = make_schedule(config.default_scheduler, 4, config).timesteps[0]
    forward = controlled_forward(quantized, possible_routes=(BF16, NVFP4))
    cache = DeltaCache.create(layers, ((1, 1, 1),) * 2, jnp.float32, placeholders=True)
    batch = (jnp.concatenate([latents, latents]), jnp.concatenate([negative, text]), jnp.full((2,), float(t0)))
    v = np.asarray(forward(*batch, [BF16] * layers, cache)[0], np.float64)
    for layer in range(layers):
        alone = np.asarray(forward(*batch, [NVFP4 if i == layer else BF16 for i in range(layers)], cache)[0],
                           np.float64)
        assert measured[0, layer] == pytest.approx(np.abs(alone - v).sum() / np.abs(v).sum(), rel=1e-3)
    with pytest.raises(ConfigError, match="calibration rollouts"):
        RuntimeConfig(mode="int8", output_sensitivity=True)


def test_quantized_sampler_stays_close_to_bf16(float_model, quantized, inputs):
    """A stated bound: 6 DDIM steps on the small random model, INT8 and DMPQ final latents within 10% relative L1
    of the float run."""
    latents, text, negative = inputs
    settings = SamplerSettings(num_steps=6, guidance_scale=3.0)
    reference = np.asarray(sample(float_model, text, negative, latents=latents, settings=settings).latents, np.float64)
    layers = float_model.config.num_layers
    dmpq = RuntimeConfig(mode="sixbit", alpha=(1.0,) * layers, beta=(0.0,) * layers, tau_q=0.3)
    for runtime in (RuntimeConfig(mode="int8"), dmpq):
        out = np.asarray(sample(quantized, text, negative, latents=latents, settings=settings,
                                runtime=runtime).latents, np.float64)
        err = np.abs(out - reference).sum() / np.abs(reference).sum()
        assert err < 0.10, f"{runtime.mode}: relative L1 error {err:.3f}"


def test_8bit_attention_runs_in_every_computed_block_and_stays_close(float_model, inputs):
    """RuntimeConfig(attention="int8") puts the blocks' self-attention on 8-bit Q·Kᵀ (on CPU: the kernel's jnp
    reference): on the float model it changes the result a little."""
    latents, text, negative = inputs
    settings = SamplerSettings(num_steps=4, guidance_scale=3.0)
    run = lambda model, runtime: np.asarray(sample(model, text, negative, latents=latents, settings=settings,  # noqa: E731
                                                   runtime=runtime).latents, np.float64)
    rel = lambda a, b: np.abs(a - b).sum() / np.abs(b).sum()  # noqa: E731
    bf16 = run(float_model, RuntimeConfig(mode="bf16"))
    attn8 = run(float_model, RuntimeConfig(mode="bf16", attention="int8"))
    assert 0 < rel(attn8, bf16) < 0.03  # with quantized linears: test_wan_runtime's int8+attn8
    with pytest.raises(ConfigError, match="attention precision 'fp8'"):
        RuntimeConfig(attention="fp8")


def test_quantized_mode_on_a_float_model_names_the_fix(float_model, inputs):
    latents, text, negative = inputs
    with pytest.raises(InputError, match="quant nvfp4"):
        sample(float_model, text, negative, latents=latents, runtime=RuntimeConfig(mode="int8"))


def test_a_calibration_for_another_model_is_refused(quantized, inputs):
    latents, text, negative = inputs
    other = RuntimeConfig(mode="sixbit", alpha=(1.0,) * 6, beta=(0.0,) * 6, tau_q=0.1)
    with pytest.raises(InputError, match="calibration has 6 blocks but this model has 3"):
        sample(quantized, text, negative, latents=latents, runtime=other)


# ------------------------------------------------------------------------------------------------ calibration
def test_fit_recovers_a_linear_predictor_and_solves_tau_q_for_the_bits(tmp_path):
    rng = np.random.default_rng()
    steps, layers = 30, 3
    rollouts = []
    for _ in range(4):
        gamma = rng.uniform(0.1, 1.0, (steps, layers))
        error = np.zeros((steps, layers))
        error[1:] = 0.5 * gamma[:-1] + 0.02 * np.arange(layers)  # exact: E(t) = 0.5 Γ(t-1) + 0.02 l
        change = rng.uniform(0, 1, (steps, layers))
        rollouts.append(StepStats(np.zeros((steps, layers)), gamma, change, np.zeros((steps, layers)), error,
                                  np.zeros((steps, layers))))
    cal = fit(rollouts, target_bits=6.0)
    np.testing.assert_allclose(cal.alpha, 0.5, atol=1e-9)
    np.testing.assert_allclose(cal.beta, 0.02 * np.arange(layers), atol=1e-9)
    assert min(cal.pearson_r) > 0.999
    assert cal.expected_bits == pytest.approx(6.0, abs=0.05)
    with pytest.raises(ConfigError, match="4..8"):
        fit(rollouts, target_bits=3.0)
    # Per block: every block sends its own most stable half of the routed steps to NVFP4.
    per_block = fit(rollouts, target_bits=6.0, routing="per-block")
    assert per_block.routing == "per-block" and len(per_block.tau_q) == layers
    predicted = np.concatenate([r.gamma[:-1] for r in rollouts]) * 0.5 + 0.02 * np.arange(layers)
    share = (predicted <= np.asarray(per_block.tau_q)).mean(axis=0)
    np.testing.assert_allclose(share, 0.5 * steps / (steps - 1), atol=0.02)
    assert "per block" in per_block.report()
    assert calibration_fields(per_block.save(tmp_path / "cal.json"))["tau_q"] == tuple(per_block.tau_q)
    with pytest.raises(ConfigError, match="unknown routing"):
        fit(rollouts, routing="random")


def test_fit_uses_the_chosen_signal_reports_the_other_and_warns_about_weak_or_reversed_blocks():
    rng = np.random.default_rng(7)  # fixed: block 1's noise must give a weak fit with a positive slope
    steps, layers = 30, 3
    rollouts = []
    for _ in range(3):
        gamma = rng.uniform(0.1, 1.0, (steps, layers))
        block = np.zeros((steps, layers))
        block[1:] = 0.3 * gamma[:-1] + 0.01  # E(t) follows Γ(t-1) in every block
        linear = np.zeros((steps, layers))
        noise = rng.uniform(0, 1, steps - 1)
        linear[1:] = np.stack([-0.2 * gamma[:-1, 0], 0.1 * gamma[:-1, 1] + noise, 0.1 * gamma[:-1, 2]], axis=1)
        rollouts.append(StepStats(np.zeros((steps, layers)), gamma, np.zeros((steps, layers)),
                                  np.zeros((steps, layers)), block, linear))
    cal = fit(rollouts)
    assert cal.signal == "block" and min(cal.pearson_r) > 0.999 and cal.pearson_r_within_blocks > 0.999
    assert cal.warnings() == [] and [o["signal"] for o in cal.info["other_signals"]] == ["linear"]
    old = fit(rollouts, signal="linear")
    assert old.alpha[0] < 0 and old.pearson_r[2] > 0.999
    warnings = old.warnings()
    assert len(warnings) == 2 and "block 0: negative slope" in warnings[0] and "block 1: weak fit" in warnings[1]
    assert "warning: block 0: negative slope" in old.report()
    with pytest.raises(ConfigError, match="did not measure the output signal"):
        fit(rollouts, signal="output")
    with pytest.raises(ConfigError, match="unknown sensitivity signal"):
        fit(rollouts, signal="model")
    # Rollouts that measured the output signal: fit on it, the other two reported.
    output = [r._replace(output_error=2.0 * r.nvfp4_error + 0.001) for r in rollouts]
    at_output = fit(output, signal="output")
    np.testing.assert_allclose(at_output.alpha, 0.6, atol=1e-9)
    assert [o["signal"] for o in at_output.info["other_signals"]] == ["block", "linear"]
    assert "the linear signal would fit" in at_output.report()


def test_route_plot_shows_nvfp4_on_the_low_gamma_block_steps(tmp_path):
    from PIL import Image

    from sixbit_jax.calibrate import route_plot

    rng = np.random.default_rng()
    steps, layers = 12, 2
    gamma = rng.uniform(0.1, 1.0, (steps, layers))
    block = np.zeros((steps, layers))
    block[1:] = 0.3 * gamma[:-1]
    stats = [StepStats(np.zeros((steps, layers)), gamma, np.zeros((steps, layers)), np.zeros((steps, layers)), block,
                       block)]
    cal = fit(stats, target_bits=6.0)
    path = route_plot(cal, stats, tmp_path / "routes.png")
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"))[30:]  # below the title and legend
    nvfp4_rows = np.nonzero((pixels == (0x1F, 0x77, 0xB4)).all(-1))[0]
    int8_rows = np.nonzero((pixels == (0xFF, 0x7F, 0x0E)).all(-1))[0]
    assert nvfp4_rows.size and int8_rows.size
    assert nvfp4_rows.mean() > int8_rows.mean(), "NVFP4 points should sit lower (smaller Γ) than INT8 points"


def test_calibration_replays_the_runtime_skip_rule_and_solves_tau_c_for_the_skip_target():
    rule = RuntimeConfig(mode="int8", tdc=True, tau_c=0.1, max_skips=2, pdr=False)
    live = _simulate(rule, 12, change=0.0) == SKIP  # [steps, L] from choose_routes itself
    replayed = replay_skip_rule(np.zeros((1, 12, 2)), 0.1, rule)[0]
    np.testing.assert_array_equal(replayed, live)

    rng = np.random.default_rng()
    steps, layers = 30, 4
    rollouts = [StepStats(np.zeros((steps, layers)), rng.uniform(0.1, 1, (steps, layers)),
                          rng.uniform(0.02, 0.4, (steps, layers)), np.zeros((steps, layers)),
                          rng.uniform(0, 0.1, (steps, layers)), rng.uniform(0, 0.1, (steps, layers)))
                for _ in range(3)]
    for target in (0.1, 0.3):
        cal = fit(rollouts, target_skip=target)
        assert target <= cal.expected_skip < target + 0.05
        changes = np.stack([s.change for s in rollouts])
        # the skip fraction is not strictly monotone in tau_c (an earlier skip moves later refreshes), but well
        # below the solution it falls short of the target
        assert replay_skip_rule(changes, cal.tau_c * 0.5, RuntimeConfig(mode="bf16")).mean() < target
    assert fit(rollouts, target_skip=0.0).tau_c == 0.0
    with pytest.raises(ConfigError, match="skip fraction"):
        fit(rollouts, target_skip=1.0)


def test_the_cli_takes_tau_c_from_the_calibration_that_belongs_to_the_model(float_model, tmp_path):
    """--tdc reads tau_c from the checkpoint's calibration (or the shipped model's, for the shipped model only);
    --mode sixbit without a calibration names the fix."""
    import argparse
    import json

    from sixbit_jax.cli import _runtime
    from sixbit_jax.shapes.pipeline import PACKAGED_CALIBRATION

    defaults = {"mode": "int8", "tdc": True, "no_pdr": False, "cache_dtype": None, "calibration": None, "tau_c": None,
                "attention": "bf16"}
    args = lambda **kw: argparse.Namespace(**{**defaults, **kw})  # noqa: E731
    shipped_tau_c = json.loads(PACKAGED_CALIBRATION.read_text())["tau_c"]
    assert _runtime(args(), None, float_model)[1].tau_c == shipped_tau_c
    assert _runtime(args(), tmp_path, float_model)[1].tau_c == RuntimeConfig(mode="int8").tau_c, "not another model's"
    (tmp_path / "calibration.json").write_text(PACKAGED_CALIBRATION.read_text().replace(str(shipped_tau_c), "0.25"))
    assert _runtime(args(), tmp_path, float_model)[1].tau_c == 0.25
    assert _runtime(args(tau_c=0.5), tmp_path, float_model)[1].tau_c == 0.5
    with pytest.raises(InputError, match="sixbit calibrate"):
        _runtime(args(mode="sixbit"), tmp_path / "elsewhere", float_model)


def test_nvfp4_on_fp8_operands_reaches_every_nvfp4_linear(quantized, inputs):
    """RuntimeConfig(nvfp4_operands="fp8"): the NVFP4 linears take their values as FP8 tensor cores would (one more
    rounding of each operand). On this random model the two NVFP4 runs differ from each other about as much as each
    differs from W4A16 (3 steps amplify any difference), but the FP8 rounding adds little to the error against
    W4A16 (measured: 8.5% -> 8.9%)."""
    latents, text, negative = inputs
    settings = SamplerSettings(num_steps=3, guidance_scale=3.0)
    run = lambda runtime: np.asarray(sample(quantized, text, negative, latents=latents, settings=settings,  # noqa: E731
                                            runtime=runtime).latents, np.float64)
    exact, fp8 = run(RuntimeConfig(mode="nvfp4")), run(RuntimeConfig(mode="nvfp4", nvfp4_operands="fp8"))
    bf16 = run(RuntimeConfig(mode="bf16"))
    rel = lambda a, b: np.abs(a - b).sum() / np.abs(b).sum()  # noqa: E731
    assert rel(fp8, exact) > 0  # the knob reaches the linears
    assert rel(fp8, bf16) < 1.15 * rel(exact, bf16)
    with pytest.raises(ConfigError, match="NVFP4 operands 'fp4'"):
        RuntimeConfig(nvfp4_operands="fp4")

"""The quality harness behind `sixbit eval`: sample a fixed prompt set in several precision modes from identical
initial noise, then score every mode against the BF16 samples (PSNR, SSIM) and against its prompts (prompt
accuracy from the analytic detectors, which are first checked on generator ground truth)."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import jax
import numpy as np

from sixbit_jax.errors import InputError
from sixbit_jax.media import contact_sheet
from sixbit_jax.metrics import psnr, ssim
from sixbit_jax.quant.model import quantize_model
from sixbit_jax.runtime import RunSummary, RuntimeConfig, concatenate_stats, fields_for_run
from sixbit_jax.shapes import world
from sixbit_jax.shapes.detect import detect, prompt_accuracy
from sixbit_jax.shapes.pipeline import DEFAULT_GUIDANCE, DEFAULT_STEPS, ShapesPipeline

@dataclasses.dataclass(frozen=True)
class Mode:
    """How to run one evaluated mode: the float dtype, and for quantized modes the 6Bit runtime settings (the model
    is quantized to NVFP4 weights in memory from the float checkpoint)."""

    dtype: str = "bf16"
    runtime: dict | None = None  # RuntimeConfig fields; None: the float model, no runtime
    float_weights: bool = False  # run `runtime` on the float model (not quantized in memory)


# The paper's ablation, in order: static W4A4, static W4A8, DMPQ, DMPQ+TDC, DMPQ+TDC+PDR; plus float references and
# W4A16 (NVFP4 weights, bf16 activations: the weight-quantization floor).
MODES = {
    "bf16": Mode("bf16"), "fp16": Mode("fp16"), "fp32": Mode("fp32"),
    "w4a16": Mode(runtime={"mode": "bf16"}),
    "nvfp4": Mode(runtime={"mode": "nvfp4"}),
    # NVFP4 with its values rounded as Hopper's FP8 tensor cores would take them (formats.fp8_rounded)
    "nvfp4-fp8": Mode(runtime={"mode": "nvfp4", "nvfp4_operands": "fp8"}),
    "dmpq-fp8": Mode(runtime={"mode": "sixbit", "nvfp4_operands": "fp8"}),
    "int8": Mode(runtime={"mode": "int8"}),
    "dmpq": Mode(runtime={"mode": "sixbit"}),
    "dmpq+tdc": Mode(runtime={"mode": "sixbit", "tdc": True, "pdr": False}),
    "dmpq+tdc+pdr": Mode(runtime={"mode": "sixbit", "tdc": True, "pdr": True}),
    # Hopper's fastest configuration: no FP4 tensor cores there, so every computed block runs INT8.
    "int8+tdc+pdr": Mode(runtime={"mode": "int8", "tdc": True, "pdr": True}),
    # 8-bit attention (int8 Q·Kᵀ) alone on the bf16 model, and with the quantized modes.
    "attn8": Mode(runtime={"mode": "bf16", "attention": "int8"}, float_weights=True),
    "int8+attn8": Mode(runtime={"mode": "int8", "attention": "int8"}),
    "dmpq+tdc+pdr+attn8": Mode(runtime={"mode": "sixbit", "tdc": True, "pdr": True, "attention": "int8"}),
    "int8+tdc+pdr+attn8": Mode(runtime={"mode": "int8", "tdc": True, "pdr": True, "attention": "int8"}),
}
REFERENCE_MODE = "bf16"
PROMPT_SEED = 2024  # the fixed prompt set is drawn from the generator with this seed
DETECTOR_CHECK_CLIPS = 1000
CONTACT_SHEET_PROMPTS = 4


def eval_prompts(n: int, seed: int = PROMPT_SEED) -> list[str]:
    """A fixed, generator-distributed prompt set (same n and seed, same prompts)."""
    return world.captions(world.sample_clips(jax.random.key(seed), n))


def detector_check(n: int | None = None, seed: int = PROMPT_SEED + 1) -> dict[str, float]:
    """Detector accuracy on rendered ground-truth clips (default: DETECTOR_CHECK_CLIPS of them, read at call time):
    the ceiling of every prompt-accuracy figure."""
    clips = world.sample_clips(jax.random.key(seed), n or DETECTOR_CHECK_CLIPS)
    frames = np.asarray(world.render(clips))
    return prompt_accuracy([detect(f) for f in frames], world.truths(clips))


@dataclasses.dataclass
class ModeResult:
    mode: str
    clips: np.ndarray  # [seeds * prompts, F, H, W, 3] in [0, 1]
    seconds: float  # sampling wall time, all seeds (compilation included in the first)
    accuracy: dict[str, float]
    psnr: float | None = None  # vs the reference mode, mean over clips
    ssim: float | None = None
    summary: dict | None = None  # 6Bit runtime modes: activation bits, skips, fallbacks (over all seeds)


@dataclasses.dataclass
class EvalReport:
    prompts: list[str]
    seeds: list[int]
    steps: int
    guidance: float
    detectors_on_ground_truth: dict[str, float]
    results: list[ModeResult]
    device: str
    knobs: dict | None = None  # the runtime knobs the quantized modes used
    detector_clips: int = DETECTOR_CHECK_CLIPS  # how many ground-truth clips the detector check rendered

    def markdown(self) -> str:
        gt = self.detectors_on_ground_truth
        knobs = f" Runtime knobs: {self.knobs}." if self.knobs else ""
        lines = [f"Prompt set: {len(self.prompts)} prompts x seeds {self.seeds}, {self.steps} DDIM steps, guidance "
                 f"{self.guidance}, on {self.device}.{knobs} Detectors on generator ground truth "
                 f"({self.detector_clips} clips): prompt {gt['prompt']:.1%} (shape {gt['shape']:.1%}, colour "
                 f"{gt['colour']:.1%}, motion {gt['motion']:.1%}, background {gt['background']:.1%}).", "",
                 f"| mode | PSNR vs {REFERENCE_MODE} (dB) | SSIM vs {REFERENCE_MODE} | prompt accuracy | shape | "
                 "colour | motion | background | act. bits (skips 0 / computed) | skipped | bf16 fallbacks | "
                 "sampling s (compile included) |",
                 "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in self.results:
            reference = r.mode == REFERENCE_MODE
            a = r.accuracy
            q = r.summary
            runtime_cells = (f"{q['bits_with_skips']:.2f} / {q['bits_without_skips']:.2f} | {q['skip_fraction']:.0%} | "
                             f"{q['bf16_fallbacks']}" if q else "- | - | -")
            lines.append(f"| {r.mode} | {'(reference)' if reference else f'{r.psnr:.2f}'} | "
                         f"{'(reference)' if reference else f'{r.ssim:.4f}'} | {a['prompt']:.1%} | {a['shape']:.1%} | "
                         f"{a['colour']:.1%} | {a['motion']:.1%} | {a['background']:.1%} | {runtime_cells} | "
                         f"{r.seconds:.1f} |")
        return "\n".join(lines) + "\n"

    def write(self, out: str | Path) -> dict[str, Path]:
        """results.md, results.json and contact_sheet.png (the first prompts, one row per mode) in `out`."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.md").write_text(self.markdown())
        summary = {k: v for k, v in dataclasses.asdict(self).items() if k != "results"}
        summary["results"] = [{k: v for k, v in dataclasses.asdict(r).items() if k != "clips"} for r in self.results]
        (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
        rows = [(f"{r.mode}: {self.prompts[i]}", r.clips[i])
                for i in range(min(CONTACT_SHEET_PROMPTS, len(self.prompts))) for r in self.results]
        return {"table": out / "results.md", "json": out / "results.json",
                "sheet": contact_sheet(out / "contact_sheet.png", rows)}


def evaluate(checkpoint: str | Path, modes: list[str], *, prompts: list[str], seeds: list[int],
             steps: int = DEFAULT_STEPS, guidance: float = DEFAULT_GUIDANCE,
             calibration: str | Path | list[str | Path] | None = None, runtime_overrides: dict | None = None,
             tau_c_sweep: list[float] | None = None, progress: bool = False) -> EvalReport:
    """Sample every mode (the reference first) and score it. `calibration` (alpha, beta, tau_q, tau_c, PDR's
    threshold) is needed by the DMPQ modes; several files run each mode that reads one once per file, as rows
    named "MODE [file stem]" (one BF16 reference for all). `runtime_overrides` sets further RuntimeConfig knobs
    (tau_c, max_skips, ...) for every quantized mode; `tau_c_sweep` runs each TDC mode once per value, as rows
    named "MODE tau_c=V"."""
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise InputError(f"unknown mode(s) {', '.join(unknown)}; available: {', '.join(MODES)}")
    if not prompts or not seeds:
        raise InputError("evaluation needs at least one prompt and one seed")
    modes = [REFERENCE_MODE] + [m for m in dict.fromkeys(modes) if m != REFERENCE_MODE]
    wanted = [world.parse_caption(p) for p in prompts] * len(seeds)
    float_pipes: dict[str, ShapesPipeline] = {}
    quantized_pipe = None
    calibrations = list(calibration) if isinstance(calibration, (list, tuple)) else [calibration]
    results, knobs = [], None
    for row, name, sweep_fields, calibration in _runs(modes, calibrations, tau_c_sweep):
        mode = MODES[name]
        if mode.dtype not in float_pipes:
            float_pipes[mode.dtype] = ShapesPipeline.from_checkpoint(checkpoint, dtype=mode.dtype)
        pipe, runtime = float_pipes[mode.dtype], None
        if mode.runtime is not None:
            if quantized_pipe is None and not mode.float_weights:
                quantized_pipe = ShapesPipeline(quantize_model(pipe.model), pipe.text_encoder)
            fields = {**mode.runtime, **_calibration_fields(mode, calibration), **(runtime_overrides or {}),
                      **sweep_fields}
            pipe, runtime = pipe if mode.float_weights else quantized_pipe, RuntimeConfig(**fields)
            per_row = ("mode", "tdc", "pdr", "attention") + (("tau_c",) if tau_c_sweep else ()) + (  # in the rows
                ("tau_q", "tau_c", "outlier_ratio") if len(calibrations) > 1 else ())
            knobs = {k: v for k, v in runtime.knobs().items() if k not in per_row}
        start = time.perf_counter()
        outputs = [pipe(prompts, seed=s, steps=steps, guidance=guidance, progress=progress, runtime=runtime)
                   for s in seeds]
        seconds = time.perf_counter() - start
        clips = np.concatenate([o.clips for o in outputs])
        summary = None
        if runtime is not None:
            stats = concatenate_stats([o.result.stats for o in outputs])
            summary = dataclasses.asdict(RunSummary.from_stats(stats, len(pipe.model.ACTIVATION_LINEARS)))
        results.append(ModeResult(row, clips, seconds, prompt_accuracy([detect(c) for c in clips], wanted),
                                  summary=summary))
    reference = results[0].clips
    for r in results[1:]:
        r.psnr = float(np.mean([psnr(a, b) for a, b in zip(r.clips, reference)]))
        r.ssim = float(np.mean([ssim(a, b) for a, b in zip(r.clips, reference)]))
    return EvalReport(list(prompts), list(seeds), steps, guidance, detector_check(), results,
                      jax.devices()[0].device_kind, knobs, DETECTOR_CHECK_CLIPS)


def _uses_tdc(name: str) -> bool:
    return bool((MODES[name].runtime or {}).get("tdc"))


def _runs(modes: list[str], calibrations: list, tau_c_sweep: list[float] | None) -> list[tuple]:
    """(row name, mode, extra runtime fields, calibration) of every sampling run, mode by mode."""
    runs = []
    for name in modes:
        reads_calibration = (MODES[name].runtime or {}).get("mode") == "sixbit" or _uses_tdc(name)
        per_file = calibrations if reads_calibration and len(calibrations) > 1 else calibrations[:1]
        taus = tau_c_sweep if tau_c_sweep and _uses_tdc(name) else [None]
        for calibration in per_file:
            for tau in taus:
                row = (name + (f" [{Path(calibration).stem}]" if len(per_file) > 1 else "")
                       + (f" tau_c={tau:g}" if tau is not None else ""))
                runs.append((row, name, {} if tau is None else {"tau_c": tau}, calibration))
    return runs


def _calibration_fields(mode: Mode, calibration: str | Path | None) -> dict:
    if calibration is None:
        if mode.runtime.get("mode") == "sixbit":
            raise InputError("the DMPQ modes need a calibration file (`sixbit calibrate`); pass --calibration")
        return {}
    return fields_for_run(calibration, mode.runtime["mode"], mode.runtime.get("tdc", False))

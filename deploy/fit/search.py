"""The --fit search: the plan that meets every budget at the least accuracy loss, within a time budget.

baseline (the target's default plan, measured) -> screen: each lever value alone, and every runtime x precision
(a form that leaves the legal graph unchanged is skipped uncompiled) -> predict every combination from the screen
(latency and size: the measured runtime x precision figure times the single-lever ratios; loss: the sum of the
single-lever losses; labelled "predicted") -> measure the combinations predicted to fit, least predicted loss first,
until a measured fit beats every unmeasured prediction or time runs out -> re-time the frontier side by side (host
targets) -> choose: the fitting trial with the least loss (ties: the faster), else the nearest (least overshoot).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path

from vdeploy.fit.levers import Choices, Lever, LeverContext, families_in, levers_for
from vdeploy.fit.pareto import (
    MIN_RETIME_ROUNDS,
    RETIME_RUNS,
    choose,
    frontier,
    latency_of,
    ratio_to,
    retime_rounds,
    round_s,
)
from vdeploy.fit.trial import Trial, fill_figures, judge_budgets, run_trial
from vdeploy.runtimes import backend_of, offers

MAX_RETIMED = 6  # artifacts re-timed side by side at the end (one child process each)
INT8_FALLBACKS = (8,)  # INT8 plans with this many of the most sensitive layers kept float, beside "auto"
RESERVE = 0.1  # share of the time budget kept for measuring predicted combinations and the re-timing
STARTUP_GUESS_S = 1.0  # a timing child's start until measured (children start together: deit_tiny 0.28 s each)


@dataclass(frozen=True)
class Prediction:
    choices: Choices
    latency_ms: float | None
    loss: float  # predicted 1 - worst-sample cosine (plus top-1 drop, when measured, in points)
    size_mb: float | None
    fits: bool


@dataclass
class FitResult:
    target: str
    baseline: Trial
    trials: list[Trial]
    chosen: Trial
    fits: bool
    frontier: list[Trial]
    predicted: list[Prediction]
    levers: tuple[Lever, ...]
    elapsed_s: float
    budget_s: float
    notes: list[str] = field(default_factory=list)


class Search:
    def __init__(self, request, target, progress, *, budget_s: float, allow_resize: bool, root: Path, only=None):
        self.request, self.target, self.progress = request, target, progress
        self.budget_s, self.allow_resize, self.root = budget_s, allow_resize, root
        self.only = tuple(only) if only else None  # lever names to search (None: all)
        self.started = time.perf_counter()
        self.trials: list[Trial] = []
        self.notes: list[str] = []
        self.base: Trial | None = None
        self.levers: tuple[Lever, ...] = ()
        self.heads = 0  # prunable attention heads (the prune lever's ablation cost)
        self.startup_s = STARTUP_GUESS_S  # a timing child's start, measured by each side-by-side batch

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.started)

    # ---- baseline and screen -------------------------------------------------------------------------------

    def baseline(self) -> Trial:
        from vdeploy.pipeline import new_state
        from vdeploy.plan import Shared, plan, run_plan

        spec = self.target.spec
        choices = Choices(spec.backend, spec.default_precision.value, prune_heads=self.request.prune_heads)
        state = new_state(choices.request(self.request), self.target, Shared(), self.progress)
        state.work_dir = self.root / "trial0"
        state.work_dir.mkdir(parents=True)
        started = time.perf_counter()
        run_plan(plan(state.target, state.request), state)
        trial = Trial(choices, state, seconds=round(time.perf_counter() - started, 1))
        fill_figures(trial, state)
        self.base = trial
        self.trials.append(trial)
        inputs = state.shared.loaded_inputs
        hw = tuple(inputs[0].shape[-2:]) if len(inputs) == 1 and len(inputs[0].shape) == 4 else None
        fallbacks = INT8_FALLBACKS if self.only and "int8_sensitive" in self.only else ()  # minutes each: on request
        heads = self.heads = self._prunable_heads(state)
        ctx = LeverContext(self.target, families_in(state.canonical.model), hw, self.allow_resize, fallbacks, heads)
        self.levers = tuple(lv for lv in levers_for(ctx) if self.only is None or lv.name in self.only)
        return trial

    def _prunable_heads(self, state) -> int:
        """Attention heads the prune lever may remove; 0 (and a note saying why) when it is left out."""
        if self.only is not None and "prune" not in self.only:
            return 0
        if self.request.prune_heads is not None:
            self.notes.append("prune lever left out: the build already names its pruning (--prune-heads)")
            return 0
        from vdeploy.graph_passes.head_prune import attention_blocks

        heads = sum(b.heads for b in attention_blocks(state.canonical.model) if b.refused is None)
        if heads < 2:
            self.notes.append("prune lever left out: the model has no attention block with heads vdeploy can remove")
        return heads if heads >= 2 else 0

    def screen_choices(self) -> list[Choices]:
        base, out = self.base.choices, []
        by_name = {lever.name: lever for lever in self.levers}
        for lever in self.levers:
            for value in lever.values[1:]:
                choices = lever.apply(base, value)
                if lever.name == "int8_sensitive":
                    choices = Choices(runtime=base.runtime, precision="int8", int8_sensitive=value)
                out.append(choices)
        if "runtime" in by_name and "precision" in by_name:  # other precisions on each other backend (settings
            seen = {backend_of(self.target, base.runtime)}  # variants of a backend are screened at the default)
            for runtime in by_name["runtime"].values[1:]:
                if backend_of(self.target, runtime) in seen:
                    continue
                seen.add(backend_of(self.target, runtime))
                for precision in by_name["precision"].values[1:]:
                    out.append(Choices(runtime=runtime, precision=precision))
        valid = [c for c in dict.fromkeys(out) if offers(self.target, c.runtime, c.precision)]
        # cheap ones first; pruning last (its first trial measures every head's importance)
        return sorted(valid, key=lambda c: (c.prune_heads is not None, c.precision == "int8", c.input_size is not None))

    def _legal_effect(self, choices: Choices) -> str | None:
        """Why a form-only change is not worth compiling (None: it changes the legal graph and stays legal)."""
        from vdeploy import stages
        from vdeploy.plan import resume_from
        from vdeploy.runtimes import with_runtime

        state = self.base.state
        target = with_runtime(self.target, choices.runtime, self.request.catalog)
        trial = resume_from(state, "legalize", changes={"request": choices.request(state.request), "target": target})
        stages.legalize(trial)
        if trial.coverage.unsupported:
            return f"leaves ops the target lacks ({', '.join(trial.coverage.unsupported)})"
        if trial.legal.SerializeToString() == state.legal.SerializeToString():
            return "no effect on this model's legal graph"
        return None

    def expected_s(self, choices: Choices) -> float:
        """A trial's likely cost: the median of the trials so far of its kind (INT8 or not), else the baseline's
        stages after export (three times that for a first INT8 trial: calibration and its fallback search)."""
        int8 = choices.precision == "int8"
        done = sorted(t.seconds for t in self.trials[1:] if (t.choices.precision == "int8") == int8)
        tail = sum(v for k, v in self.base.state.timings.items() if k not in ("load", "reference", "export"))
        expected = max(done[len(done) // 2] if done else tail * (3 if int8 else 1), 1.0)
        state = self.base.state
        if choices.prune_heads and state.target.spec.opset not in state.shared.head_importance:
            runs = (self.heads + 1) * len(next(iter(state.shared.samples.values())))  # the ablation, once
            expected += runs * 2 * (latency_of(self.base) or 0.0) / 1000  # in ONNX Runtime: ~2x the baseline here
        return expected

    def run(self, choices: Choices, why: str) -> Trial | None:
        expected = self.expected_s(choices)
        if self.left() - self.final_retime_s() < expected:
            self.notes.append(f"not measured (time budget): {choices.label()}")
            return None
        self.progress(f"fit: {why}: {choices.label()}")
        trial = run_trial(
            self.base.state,
            self.target,
            self.base.choices,
            choices,
            self.levers,
            self.root / f"trial{len(self.trials)}",
            self.progress,
        )
        self.trials.append(trial)
        return trial

    def screen(self) -> None:
        for choices in self.screen_choices():
            if choices.forms != self.base.choices.forms and choices.runtime == self.base.choices.runtime:
                reason = self._legal_effect(choices)
                if reason:
                    self.notes.append(f"skipped {choices.label()}: {reason}")
                    continue
            self.run(choices, "screening")
            if self.left() < RESERVE * self.budget_s:
                self.notes.append("screening stopped early: the time budget is nearly spent")
                break

    # ---- prediction and the frontier ------------------------------------------------------------------------

    def predict(self) -> list[Prediction]:
        base = self.base
        measured = {t.choices: t for t in self.trials if t.ok}
        grid = {c: t for c, t in measured.items() if not c.forms and not c.input_size and not c.prune_heads}
        budgets = base.state.request.budgets_for(base.state.target)
        out = []
        for (core, core_trial), effects in itertools.product(grid.items(), self._effects(measured)):
            choices, latency = core, self.relative_ms(core_trial) or latency_of(core_trial)
            loss, feasible = sum(core_trial.loss), not core_trial.gate_violations
            for lever, value, ratio, dloss, ok in effects:
                choices = lever.apply(choices, value)
                latency = latency * ratio if latency is not None and ratio is not None else latency
                loss, feasible = loss + dloss, feasible and ok
            if choices in measured:
                continue
            fits = feasible and (budgets.latency_ms is None or (latency is not None and latency <= budgets.latency_ms))
            fits = fits and (budgets.size_mb is None or (core_trial.size_mb or 0) <= budgets.size_mb)
            out.append(Prediction(choices, latency, loss, core_trial.size_mb, fits))
        return sorted(out, key=lambda p: (not p.fits, p.loss, p.latency_ms or 0.0))

    def _effects(self, measured) -> list[tuple]:
        """Every combination of the form / input-size values measured alone on the baseline, as
        (lever, value, latency ratio, loss delta, passed its gates) per lever."""
        base = self.base
        options = []
        for lever in self.levers:
            if lever.name in ("runtime", "precision", "int8_sensitive"):
                continue
            values = [(lever, lever.values[0], 1.0, 0.0, True)]
            for value in lever.values[1:]:
                trial = measured.get(lever.apply(base.choices, value))
                if trial is None:
                    continue
                ratio = ratio_to(trial, base)
                values.append((lever, value, ratio, sum(trial.loss) - sum(base.loss), not trial.gate_violations))
            options.append(values)
        return list(itertools.product(*options))

    def measure_predicted(self, predicted: list[Prediction]) -> None:
        for prediction in [p for p in predicted if p.fits]:
            best = min((sum(t.loss) for t in self.trials if self.fits_relative(t)), default=None)
            if best is not None and best <= prediction.loss:
                break
            if self.run(prediction.choices, "measuring a predicted fit") is None:
                break
        if not any(self.fits_relative(t) for t in self.trials):  # the nearest predictions: how near it came
            for prediction in [p for p in predicted if not p.fits][:2]:
                if self.run(prediction.choices, "measuring a near miss") is None:
                    break

    def retime(self, trials: list[Trial], *, keep_s: float = 0.0) -> None:
        """Time `trials` again beside the baseline, in batches (one child per artifact, shuffled turns): under a
        busy host one-by-one timings swing by several times, side-by-side ones hold their ratios. A batch gets
        the rounds the time budget has left beyond `keep_s` (fewer than MIN_RETIME_ROUNDS: not timed; a note)."""
        from vdeploy.validate.interleave import time_artifacts

        host = [t for t in trials if t.ok and t.latency_source == "measured" and t is not self.base]
        if not host or self.base.latency_source != "measured":
            return
        for i in range(0, len(host), MAX_RETIMED - 1):
            batch = [self.base, *host[i : i + MAX_RETIMED - 1]]
            rounds = retime_rounds(self.left() - keep_s, len(batch), self.startup_s, round_s(batch))
            if rounds < MIN_RETIME_ROUNDS:
                self.notes.append(
                    f"not timed side by side (time budget): {', '.join(t.choices.label() for t in batch[1:])}"
                )
                continue
            self.progress(f"fit: timing {len(batch)} plans side by side ({rounds} rounds)")
            entries = [(t.state.artifact, t.state.work_dir, t.state.lowered.run_env, t.state.feeds) for t in batch]
            started = time.perf_counter()
            latencies = time_artifacts(entries, rounds=rounds, runs=RETIME_RUNS)
            spent = time.perf_counter() - started
            for trial, latency in zip(batch, latencies):
                trial.side_by_side_ms, trial.retimed = round(latency.p50, 4), latency
                trial.ratio_to_base = round(latency.p50 / latencies[0].p50, 4)
                judge_budgets(trial, trial.state)
            self.startup_s = max(0.0, (spent - rounds * round_s(batch)) / len(batch))  # the rest: the children's start

    def final_retime_s(self) -> float:
        """Time kept for the final side-by-side batch (the baseline and MAX_RETIMED - 1 finalists, each taken at
        the baseline's latency): what `retime` needs for MIN_RETIME_ROUNDS rounds."""
        if self.base is None or self.base.latency_source != "measured":
            return 0.0
        return MAX_RETIMED * self.startup_s + MIN_RETIME_ROUNDS * MAX_RETIMED * round_s([self.base])

    def relative_ms(self, trial: Trial) -> float | None:
        """A trial's latency on the baseline's latest scale: its side-by-side ratio to the baseline (measured in
        one batch) times the baseline's latest figure; comparable across batches while the host's speed drifts."""
        base_ms = latency_of(self.base)
        ratio = ratio_to(trial, self.base)
        return None if base_ms is None or ratio is None else ratio * base_ms

    def fits_relative(self, t: Trial) -> bool:
        """Fits every budget, its latency taken on the baseline's latest scale (relative_ms) where timed so."""
        if not t.ok or t.gate_violations or t.unmeasured or any(k != "latency_ms" for k in t.misses):
            return False
        budget = self.base.state.request.budgets_for(self.base.state.target).latency_ms
        ms = self.relative_ms(t) if t.ratio_to_base is not None else (t.side_by_side_ms or t.latency_ms)
        return budget is None or (ms is not None and ms <= budget)

    def finalists(self, since: int) -> list[Trial]:
        """Up to MAX_RETIMED - 1 plans for the final side-by-side batch: those measured after the screen, the
        least-loss plans that fit on the relative scale, the fastest that pass their gates."""
        ok = [t for t in self.trials if t.ok and t is not self.base and not t.gate_violations]
        scale = {id(t): self.relative_ms(t) for t in ok}
        fitting = sorted((t for t in ok if self.fits_relative(t)), key=lambda t: (t.loss, scale[id(t)] or 0.0))
        fastest = sorted((t for t in ok if scale[id(t)] is not None), key=lambda t: scale[id(t)])
        picked = {id(t): t for t in (*self.trials[since:], *fitting[:3], *fastest[:3]) if t is not self.base}
        return list(picked.values())[: MAX_RETIMED - 1]

    def final_choice(self, finalists: list[Trial]) -> Trial:
        """Among the baseline and the finalists, timed in one batch, when the host timed them; else among all."""
        timed = [self.base, *finalists]
        if self.base.latency_source == "measured" and all(t.side_by_side_ms is not None for t in timed):
            return choose(timed)
        return choose(self.trials)

    def result(self, chosen: Trial) -> FitResult:
        predicted = self.predict()
        elapsed = round(time.perf_counter() - self.started, 1)
        return FitResult(
            self.target.name,
            self.base,
            self.trials,
            chosen,
            chosen.fits,
            frontier(self.trials),
            predicted,
            self.levers,
            elapsed,
            self.budget_s,
            self.notes,
        )


LEVER_NAMES = (
    "runtime",
    "precision",
    "int8_sensitive",
    "gelu",
    "erf",
    "softmax",
    "attention",
    "layer_norm",
    "input_size",
    "prune",
)


def search(request, target, progress, *, budget_s: float, allow_resize: bool, root: Path, only=None) -> FitResult:
    """Run the search (`only`: the lever names to search, None: every lever the target and model allow)."""
    from vdeploy.errors import UsageError

    unknown = sorted(set(only or ()) - set(LEVER_NAMES))
    if unknown:
        raise UsageError(f"unknown lever(s): {', '.join(unknown)}", f"levers: {', '.join(LEVER_NAMES)}")
    if only and "input_size" in only and not allow_resize:
        raise UsageError("the input_size lever changes the model's input", "add --fit-allow-resize to allow it")
    s = Search(request, target, progress, budget_s=budget_s, allow_resize=allow_resize, root=root, only=only)
    s.baseline()
    s.screen()
    s.retime(s.trials, keep_s=s.final_retime_s())  # every screened plan beside the baseline: the ratios predicted
    screened = len(s.trials)
    s.measure_predicted(s.predict())
    finalists = s.finalists(screened)
    s.retime(finalists)  # the final comparison: the baseline and the finalists in one side-by-side batch
    return s.result(s.final_choice(finalists))

"""PASS / FAIL gates: each threshold of the shot's ``qc.thresholds`` checks one summary metric.

A gate is ``pass``, ``fail`` or ``n/a`` (the metric could not be measured: no audio, no
ground truth, no face...). ``n/a`` never passes silently: it is listed, with its reason, but
it does not fail the shot (a dub has no ground-truth PSNR; that is not the render's fault).
Failing gates come first, each with its value, threshold and a one-line reason a reviewer
can act on. Default thresholds are the shot schema's (:class:`engine.shot.QcThresholds`,
documented in docs/shot_reference.md), so there is one source of truth.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from engine.shot.schema import QcThresholds

__all__ = ["GateSpec", "GATES", "GateResult", "evaluate_gates", "verdict", "default_thresholds"]


@dataclass(frozen=True)
class GateSpec:
    threshold: str          # key in qc.thresholds
    metric: str             # key in the summary metrics
    op: str                 # ">=" (minimum) or "<=" (maximum)
    label: str              # what the reviewer reads
    unit: str = ""
    absolute: bool = False  # compare |value| (a signed offset)
    fail_reason: str = ""   # format string: {value}, {threshold}, {unit}


GATES: tuple[GateSpec, ...] = (
    GateSpec("frames_missing_max", "frames_missing", "<=", "missing / unreadable render frames", " frames",
             fail_reason="{value:g} render frame(s) missing or unreadable"),
    GateSpec("psnr_min", "psnr_db", ">=", "PSNR vs plate (face)", " dB",
             fail_reason="face PSNR {value:.2f} dB is below {threshold:g} dB: the render departs from the plate"),
    GateSpec("ssim_min", "ssim", ">=", "SSIM vs plate (face)",
             fail_reason="face SSIM {value:.3f} is below {threshold:g}: structure differs from the plate"),
    GateSpec("lmd_max_px", "lmd_px", "<=", "landmark distance to drive targets", " px",
             fail_reason="landmarks are {value:.2f} px from the drive targets (max {threshold:g} px): "
                         "the performance is not the one asked for"),
    GateSpec("av_offset_max_frames", "av_offset_frames", "<=", "audio-visual offset", " frames", absolute=True,
             fail_reason="mouth and audio are {value:+.1f} frames apart (max {threshold:g}): lip sync is off"
                         " (positive: audio late)"),
    GateSpec("flicker_max", "flicker", "<=", "temporal flicker (face)",
             fail_reason="face flicker {value:.4f} exceeds {threshold:g}: frame-to-frame change the plate does not have"),
    GateSpec("identity_min", "identity", ">=", "identity similarity to plate (dlib cosine)",
             fail_reason="identity similarity {value:.3f} is below {threshold:g}: the face does not look like the actor"),
    GateSpec("no_face_max_fraction", "no_face_fraction", "<=", "frames with no face in the render",
             fail_reason="{value:.1%} of render frames have no detectable face (max {threshold:.1%})"),
)


def default_thresholds() -> dict[str, float]:
    t = QcThresholds().as_dict()
    t["frames_missing_max"] = 0
    return t


@dataclass
class GateResult:
    name: str
    metric: str
    label: str
    value: float | None
    threshold: float
    op: str
    status: str            # "pass" | "fail" | "n/a"
    reason: str
    unit: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.status != "fail"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "metric": self.metric, "label": self.label, "value": self.value,
                "threshold": self.threshold, "op": self.op, "status": self.status, "reason": self.reason,
                "unit": self.unit.strip()}


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def evaluate_gates(summary: Mapping[str, Any], thresholds: Mapping[str, float],
                   unavailable: Mapping[str, str] | None = None) -> list[GateResult]:
    """Gate every metric of ``summary`` with a threshold; failing gates first, then n/a, then pass.

    ``unavailable``: metric -> why it was not measured (shown as the n/a reason)."""
    unavailable = dict(unavailable or {})
    th = {**default_thresholds(), **dict(thresholds)}
    out: list[GateResult] = []
    for g in GATES:
        limit = float(th[g.threshold])
        value = summary.get(g.metric)
        if not _finite(value) and not (isinstance(value, float) and math.isinf(value)):
            why = unavailable.get(g.metric, "not measured")
            out.append(GateResult(g.threshold, g.metric, g.label, None, limit, g.op, "n/a", why, g.unit))
            continue
        v = float(value)
        cmp = abs(v) if g.absolute else v
        ok = cmp >= limit if g.op == ">=" else cmp <= limit
        reason = ("within threshold" if ok else g.fail_reason.format(value=v, threshold=limit, unit=g.unit))
        out.append(GateResult(g.threshold, g.metric, g.label, v, limit, g.op, "pass" if ok else "fail", reason, g.unit))
    order = {"fail": 0, "n/a": 1, "pass": 2}
    out.sort(key=lambda r: order[r.status])   # stable: schema order within each group
    return out


def verdict(gates: list[GateResult]) -> str:
    return "PASS" if all(g.passed for g in gates) else "FAIL"

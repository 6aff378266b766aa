"""Shot report of the foundation: frame completeness, fidelity to the plate, flicker.

This is the report every shot gets (the full QC of the QC issue builds on it): it checks
that every frame exists and opens, measures PSNR of the render against the plate (in the
display domain a reviewer looks at), a temporal flicker index, and writes a self-contained
HTML page (images inlined) plus a JSON of every figure.

Flicker index: mean over frames of |(r_t - r_{t-1}) - (p_t - p_{t-1})|, the part of the
render's frame-to-frame change that the plate does not have (0 for a perfect pass-through).
"""
from __future__ import annotations

import base64
import html
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from engine import __version__
from engine.io import colour
from engine.io.plate import open_plate
from engine.pipeline import Stage, StageContext
from engine.stages.common import FrameTiming, ShotLayout
from engine.stages.review import exr_display_rgb
from engine.util.atomic import atomic_path, atomic_write_json, atomic_write_text

REPORT_SCHEMA = "portrait.qc-report/1"


@dataclass(frozen=True)
class BasicQcConfig:
    colourspace: str = "Rec.709"
    psnr_min: float = 26.0
    flicker_max: float = 0.02
    contact_every: int = 8
    thumb: int = 160


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse)


def _png_data_uri(img: np.ndarray) -> str:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    if not ok:  # pragma: no cover - cv2 always encodes uint8 RGB
        raise RuntimeError("PNG encode failed")
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode()


def _thumb(img: np.ndarray, size: int) -> np.ndarray:
    h, w = img.shape[:2]
    s = size / max(h, w)
    return cv2.resize(img, (max(1, int(w * s)), max(1, int(h * s))), interpolation=cv2.INTER_AREA)


class BasicQcStage(Stage):
    name = "qc"

    def __init__(self, layout: ShotLayout, timing: FrameTiming, config: BasicQcConfig, plate: Path,
                 provenance: dict[str, Any]) -> None:
        self.layout, self.timing, self.config = layout, timing, config
        self.plate = Path(plate)
        self.provenance = dict(provenance)

    def inputs(self) -> dict[str, Path]:
        return {"frames": self.layout.render_dir, "plate": self.plate, "movie": self.layout.review_movie}

    def params(self) -> dict[str, Any]:
        return {"config": asdict(self.config), "timing": asdict(self.timing), "prefix": self.layout.frame_prefix,
                "provenance": self.provenance}

    def outputs(self) -> dict[str, Path]:
        return {"report": self.layout.qc_dir / "report.html", "metrics": self.layout.qc_dir / "metrics.json",
                "contact_sheet": self.layout.qc_dir / "contact_sheet.png"}

    def run(self, ctx: StageContext) -> None:
        cfg = self.config
        frames = list(self.timing.frames)
        per_frame: list[dict[str, Any]] = []
        rows: list[np.ndarray] = []
        prev_r = prev_p = None
        with open_plate(self.plate, self.timing.fps, self.timing.start_frame) as plate, \
                ctx.progress(len(frames), "frames") as prog:
            for f, pimg in plate.iter(frames[0], frames[-1]):
                p = colour.to_display(pimg, cfg.colourspace)
                path = self.layout.frame_path(f)
                entry: dict[str, Any] = {"frame": f}
                if not path.exists():
                    entry["status"] = "missing"
                    per_frame.append(entry)
                    prev_r = prev_p = None
                    prog.update()
                    continue
                r = exr_display_rgb(path, cfg.colourspace).astype(np.float32) / 255.0
                entry["status"] = "ok"
                entry["psnr"] = psnr(r, p)
                if prev_r is not None:
                    entry["flicker"] = float(np.mean(np.abs((r - prev_r) - (p - prev_p))))
                prev_r, prev_p = r, p
                per_frame.append(entry)
                if (f - frames[0]) % cfg.contact_every == 0:
                    pu = colour.to_uint8(p)
                    ru = colour.to_uint8(r)
                    diff = colour.to_uint8(np.clip(np.abs(r - p) * 8.0, 0, 1))
                    row = np.concatenate([_thumb(x, cfg.thumb) for x in (pu, ru, diff)], 1)
                    rows.append(cv2.putText(row.copy(), str(f), (3, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                                            (255, 255, 0), 1, cv2.LINE_AA))
                prog.update()
        ok = [e for e in per_frame if e["status"] == "ok"]
        missing = [e["frame"] for e in per_frame if e["status"] != "ok"]
        finite = [e["psnr"] for e in ok if np.isfinite(e["psnr"])]
        psnr_mean = float(np.mean(finite)) if finite else (float("inf") if ok else float("nan"))
        flick = [e["flicker"] for e in ok if "flicker" in e]
        flicker = float(np.mean(flick)) if flick else 0.0
        gates = [
            {"metric": "frames_missing", "value": len(missing), "limit": 0, "pass": not missing},
            {"metric": "psnr_mean_db", "value": psnr_mean, "limit": cfg.psnr_min, "pass": bool(psnr_mean >= cfg.psnr_min)},
            {"metric": "flicker", "value": flicker, "limit": cfg.flicker_max, "pass": bool(flicker <= cfg.flicker_max)},
        ]
        gates.sort(key=lambda g: g["pass"])  # failing gates first
        verdict = "PASS" if all(g["pass"] for g in gates) else "FAIL"
        metrics = {"schema": REPORT_SCHEMA, "engine_version": __version__, "verdict": verdict, "gates": gates,
                   "frames": {"first": frames[0], "last": frames[-1], "count": len(frames), "missing": missing},
                   "psnr_mean_db": psnr_mean, "flicker": flicker, "per_frame": per_frame,
                   "provenance": self.provenance}
        sheet = (np.concatenate(rows, 0) if rows else np.zeros((8, 8, 3), np.uint8))
        with atomic_path(self.outputs()["contact_sheet"]) as tmp:
            # cv2 picks the encoder from the extension; the temp name keeps ".png" at its end.
            if not cv2.imwrite(str(tmp), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)):
                raise RuntimeError(f"could not write {tmp}")
        atomic_write_json(self.outputs()["metrics"], json.loads(json.dumps(metrics, default=str)))
        atomic_write_text(self.outputs()["report"], self._html(metrics, sheet))

    def _html(self, m: dict[str, Any], sheet: np.ndarray) -> str:
        esc = html.escape
        colour_of = {"PASS": "#1a7f37", "FAIL": "#cf222e"}
        gate_rows = "".join(
            f"<tr class={'pass' if g['pass'] else 'fail'}><td>{esc(g['metric'])}</td><td>{g['value']:.4g}</td>"
            f"<td>{g['limit']}</td><td>{'pass' if g['pass'] else 'FAIL'}</td></tr>" for g in m["gates"])
        prov_rows = "".join(f"<tr><td>{esc(str(k))}</td><td><code>{esc(str(v))}</code></td></tr>"
                            for k, v in sorted(m["provenance"].items()))
        title = f"{self.layout.show} / {self.layout.sequence} / {self.layout.shot} {self.layout.version}"
        return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>QC {esc(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;background:#fafafa;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}
tr.fail td{{background:#ffebe9}}.verdict{{font-size:2em;font-weight:bold;color:{colour_of[m['verdict']]}}}</style>
</head><body>
<h1>QC report: {esc(title)}</h1>
<p class="verdict">{m['verdict']}</p>
<p>Frames {m['frames']['first']}-{m['frames']['last']} ({m['frames']['count']}); missing: {len(m['frames']['missing'])}.</p>
<h2>Gates</h2><table><tr><th>metric</th><th>value</th><th>limit</th><th>result</th></tr>{gate_rows}</table>
<h2>Contact sheet (plate | render | difference x8), every {self.config.contact_every} frames</h2>
<img alt="contact sheet" src="{_png_data_uri(sheet)}">
<h2>Provenance</h2><table>{prov_rows}</table>
<p><small>Portrait Engine {esc(__version__)}</small></p>
</body></html>
"""

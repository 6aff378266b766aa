"""The reviewer's page: one self-contained HTML file (PNG data URIs, inline SVG, no script) and
the JSON of every metric, both written atomically.

Page order follows a reviewer's questions: verdict and why (failing gates first, each with
value, threshold and a one-line reason), every summary figure, the per-frame plots (with the
audio's phones marked and no-face frames shaded), the contact sheet (plate | render |
difference x8), the worst frames, tracking overlays, then lip-sync details and provenance.
"""
from __future__ import annotations

import base64
import html
import math
from typing import Any, Sequence

import cv2
import numpy as np

from engine import __version__
from engine.io import colour
from engine.qc.gates import GateResult
from engine.qc.measure import LIPS, Measurements
from engine.qc.plots import PALETTE, Marker, Series, bar_plot, line_plot

__all__ = ["png_data_uri", "contact_sheet", "tile_row", "overlay_tile", "render_html", "jsonable"]

DIFF_GAIN = 8.0


def png_data_uri(img: np.ndarray) -> str:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2BGR))
    if not ok:  # pragma: no cover - cv2 always encodes uint8 RGB
        raise RuntimeError("PNG encode failed")
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode()


def _fit(img: np.ndarray, height: int) -> np.ndarray:
    h, w = img.shape[:2]
    s = height / h
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC
    return cv2.resize(img, (max(1, int(round(w * s))), height), interpolation=interp)


def _label(img: np.ndarray, text: str, corner: str = "tl") -> np.ndarray:
    out = img.copy()
    fs = max(0.35, img.shape[0] / 600)
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, fs, 1)
    x = 3 if corner == "tl" else img.shape[1] - tw - 5
    cv2.rectangle(out, (x - 2, 1), (x + tw + 2, th + base + 3), (0, 0, 0), -1)
    cv2.putText(out, text, (x, th + 2), cv2.FONT_HERSHEY_SIMPLEX, fs, (255, 255, 0), 1, cv2.LINE_AA)
    return out


def tile_row(plate_u8: np.ndarray, render_u8: np.ndarray, height: int, label: str) -> np.ndarray:
    """plate | render | |render - plate| x8, each ``height`` px tall, labelled."""
    diff = colour.to_uint8(np.clip(np.abs(render_u8.astype(np.float32) - plate_u8.astype(np.float32))
                                   / 255.0 * DIFF_GAIN, 0, 1))
    tiles = [_fit(x, height) for x in (plate_u8, render_u8, diff)]
    sep = np.full((height, 2, 3), 255, np.uint8)
    row = np.concatenate([tiles[0], sep, tiles[1], sep, tiles[2]], 1)
    return _label(row, label)


def contact_sheet(rows: Sequence[tuple[int, np.ndarray]], height: int) -> np.ndarray:
    """Rows of (frame, plate|render side by side) -> one image with plate | render | diff per row."""
    out = []
    for f, pr in rows:
        w = pr.shape[1] // 2
        out.append(tile_row(pr[:, :w], pr[:, w:], height, str(f)))
        out.append(np.full((2, out[-1].shape[1], 3), 255, np.uint8))
    return np.concatenate(out, 0) if out else np.zeros((8, 8, 3), np.uint8)


def overlay_tile(render_u8: np.ndarray, render_pts: np.ndarray, target_pts: np.ndarray, label: str,
                 size: int = 240) -> np.ndarray:
    """The face of a render frame, zoomed, with its re-tracked landmarks (green) and the target
    landmarks (magenta, the lips larger) -- where they part is where the performance is off."""
    pts = np.concatenate([p[np.isfinite(p[:, 0]), :2] for p in (render_pts, target_pts)] + [np.zeros((0, 2))])
    h, w = render_u8.shape[:2]
    if pts.size:
        lo, hi = pts.min(0), pts.max(0)
        c, side = (lo + hi) / 2, float(max(hi - lo)) * 1.25
    else:
        c, side = np.array([w / 2, h / 2]), float(min(w, h))
    s = size / max(side, 1.0)
    m = np.array([[s, 0, size / 2 - s * c[0]], [0, s, size / 2 - s * c[1]]], np.float64)
    m_idx = m.copy()
    m_idx[:, 2] += m[:, :2] @ np.array([0.5, 0.5]) - 0.5       # engine pixel centres -> cv2 indices
    img = cv2.warpAffine(render_u8, m_idx, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)

    def draw(points: np.ndarray, col: tuple[int, int, int], r: int, idx: np.ndarray | None = None) -> None:
        sel = points if idx is None else points[idx]
        for p in sel:
            if np.isfinite(p[:2]).all():
                q = m @ np.array([p[0], p[1], 1.0]) - 0.5
                cv2.circle(img, (int(round(q[0] * 16)), int(round(q[1] * 16))), r * 16, col, -1, cv2.LINE_AA, 4)
    draw(target_pts, (255, 0, 255), 1)
    draw(target_pts, (255, 0, 255), 2, LIPS)
    draw(render_pts, (60, 255, 60), 1)
    return _label(img, label)


# ------------------------------------------------------------------------------------------
def jsonable(obj: Any) -> Any:
    """Plain JSON: numpy scalars/arrays to Python, NaN/inf to None (strict JSON has neither)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    return obj


def _v(v: Any, unit: str = "") -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return f"{int(v)}{unit}"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "∞" if v > 0 else "–"
        return f"{v:.4g}{unit}"
    return html.escape(str(v))


_METRIC_DOC = {
    "psnr_db": "PSNR of the face crop vs the plate (dB)", "ssim": "SSIM of the face crop vs the plate",
    "lpips": "ST-LPIPS perceptual distance of the face crop (lower is better)",
    "psnr_full_db": "PSNR of the whole frame (dB)",
    "lmd_px": "gated landmark distance (px)", "lmd_face_px": "LMD, 468 mesh points (px)",
    "lmd_mouth_px": "LMD, 40 lip points (px)", "expression_error": "mean |render - target| of mouth open/width, eye apertures",
    "mouth_open_correlation": "correlation of render and target mouth opening",
    "flicker": "face flicker: change beyond the plate's, display [0,1]",
    "identity": "dlib cosine similarity to the plate's mean face descriptor",
    "identity_plate_baseline": "the plate's own frames against the same reference",
    "no_face_fraction": "fraction of render frames with no face", "av_offset_frames": "gated AV offset, frames (+: audio late), beyond the plate's own",
    "av_correlation": "mouth/energy correlation at the offset",
    "av_offset_p_value": "surrogate p-value of the offset's correlation peak (> 0.05: weak evidence)", "mouth_energy_correlation": "mouth/energy correlation at lag 0",
    "av_offset_closure_frames": "AV offset from bilabial closures vs vowels (second opinion, raw)",
    "av_offset_raw_frames": "render mouth vs audio, before the plate baseline",
    "av_offset_plate_frames": "plate mouth vs its production audio (estimator bias, taken as in sync)",
    "bilabial_hit_rate": "p/b/m phones with closed lips within ±1 frame",
    "matte_edge": "matte edge jitter: |2nd temporal difference| on the edge band",
}


def render_html(*, title: str, m: Measurements, gates: list[GateResult], verdict: str,
                sheet: np.ndarray, worst: list[np.ndarray], overlays: list[np.ndarray],
                provenance: dict[str, Any], thresholds: dict[str, float], fps: float,
                notes: Sequence[str] = ()) -> str:
    esc = html.escape
    s = m.summary
    fr = m.frames
    pf = m.per_frame
    shade = [int(f) for f in s.get("no_face_frames", [])] + [int(f) for f in s.get("missing_frames", [])]

    # ---- gates
    gate_rows = []
    for g in gates:
        gate_rows.append(f'<tr class="{g.status.replace("/", "")}"><td>{esc(g.label)}</td><td><code>{esc(g.name)}</code></td>'
                         f'<td>{_v(g.value, g.unit)}</td><td>{g.op} {g.threshold:g}{esc(g.unit)}</td>'
                         f'<td class="st">{g.status.upper()}</td><td>{esc(g.reason)}</td></tr>')
    failing = [g for g in gates if g.status == "fail"]
    why = ("; ".join(f"{g.label}: {g.reason}" for g in failing)) if failing else "every measured gate is within its threshold"

    # ---- summary table (every figure)
    sum_rows = []
    for k, v in s.items():
        if isinstance(v, list):
            v = (", ".join(str(x) for x in v[:40]) + (" …" if len(v) > 40 else "")) if v else "none"
        sum_rows.append(f"<tr><td><code>{esc(k)}</code></td><td>{_v(v) if not isinstance(v, str) else esc(v)}</td>"
                        f"<td>{esc(_METRIC_DOC.get(k, ''))}</td></tr>")
    for k, why_na in m.unavailable.items():
        sum_rows.append(f'<tr class="na"><td><code>{esc(k)}</code></td><td>n/a</td><td>{esc(why_na)}</td></tr>')

    # ---- plots
    ls = m.lipsync
    markers: list[Marker] = []
    for ph in ls.get("phones", []):
        if ph["label"] in ("SIL", "+SPN+", "+NSN+", "<sil>"):
            continue
        a = fr[0] + ph["start_s"] * fps - 0.5
        b = fr[0] + ph["end_s"] * fps - 0.5
        strong = ph["label"] in ("P", "B", "M")
        markers.append(Marker(a, f'{ph["label"]} {ph["start_s"]:.2f}-{ph["end_s"]:.2f}s',
                              "#cf222e" if strong else "#8c959f", strong, b if strong else None))
    plots = []
    if np.isfinite(pf["psnr_face"]).any():
        plots.append(line_plot(fr, [Series("face PSNR", pf["psnr_face"], PALETTE[0]),
                                    Series("full-frame PSNR", np.minimum(pf["psnr_full"], 80), PALETTE[5], 1.0, "3 3")],
                               title="PSNR vs plate (dB)", threshold=thresholds.get("psnr_min"),
                               threshold_label="psnr_min", shade=shade, markers=markers))
        ss = [Series("face SSIM", pf["ssim_face"], PALETTE[2])]
        if np.isfinite(pf["lpips_face"]).any():
            ss.append(Series("face ST-LPIPS", pf["lpips_face"], PALETTE[4]))
        plots.append(line_plot(fr, ss, title="SSIM (higher better) / ST-LPIPS (lower better)",
                               threshold=thresholds.get("ssim_min"), threshold_label="ssim_min", shade=shade))
    plots.append(line_plot(fr, [Series("LMD face (px)", pf["lmd_face"], PALETTE[0]),
                                Series("LMD mouth (px)", pf["lmd_mouth"], PALETTE[1])],
                           title=f"landmark distance to the target ({s.get('lmd_target', 'plate')})",
                           threshold=thresholds.get("lmd_max_px"), threshold_label="lmd_max_px", shade=shade,
                           markers=markers))
    mo_series = [Series("render mouth opening", pf["render_mouth_open"], PALETTE[1]),
                 Series("target mouth opening", pf["target_mouth_open"], PALETTE[0], 1.2, "4 3")]
    if ls.get("energy_db"):
        e = np.asarray(ls["energy_db"], np.float64)
        mo = pf["render_mouth_open"]
        lo, hi = np.nanpercentile(e, 5), np.nanmax(e)
        top = np.nanmax(mo) if np.isfinite(mo).any() else 1.0
        scaled = np.clip((e - lo) / max(hi - lo, 1e-9), 0, 1) * top
        mo_series.append(Series("audio energy 1-3 kHz (scaled)", scaled, PALETTE[2], 1.0))
    plots.append(line_plot(fr, mo_series, title="lip sync: mouth opening vs audio (red: p/b/m phones)",
                           y_label="gap / inter-ocular", shade=shade, markers=markers, height=220))
    if np.isfinite(pf["flicker"]).any():
        plots.append(line_plot(fr, [Series("face flicker", pf["flicker"], PALETTE[3])], title="temporal flicker (face)",
                               threshold=thresholds.get("flicker_max"), threshold_label="flicker_max", shade=shade))
    if np.isfinite(pf["identity"]).any():
        plots.append(line_plot(fr, [Series("render", pf["identity"], PALETTE[0]),
                                    Series("plate (baseline)", pf["identity_plate"], PALETTE[5], 1.0, "3 3")],
                               title="identity similarity (dlib cosine to the plate)",
                               threshold=thresholds.get("identity_min"), threshold_label="identity_min", shade=shade))
    if np.isfinite(pf["matte_edge"]).any():
        plots.append(line_plot(fr, [Series("matte edge jitter", pf["matte_edge"], PALETTE[4])],
                               title="matte-edge stability", shade=shade))
    small = []
    av = ls.get("av")
    if av:
        small.append(bar_plot(av["lags"], av["curve"], title="mouth/energy correlation per lag (frames, +: audio late)",
                              highlight=av["frames"], x_label="lag (frames)"))
    co = ls.get("closure_offset")
    if co and any(v is not None and math.isfinite(v) for v in co["curve"]):
        small.append(bar_plot(co["lags"], co["curve"], title="vowel - bilabial mouth contrast per lag",
                              highlight=co["frames"], x_label="lag (frames)"))

    # ---- lip-sync detail
    lip_rows = ""
    if ls:
        bil = ls.get("bilabial") or {}
        items = [("audio", ls.get("audio")), ("AV offset, gated (beyond the plate's own)", s.get("av_offset_frames")),
                 ("AV offset of the render, raw (energy 1-3 kHz)", s.get("av_offset_raw_frames")),
                 ("AV offset of the plate with its production audio", s.get("av_offset_plate_frames")),
                 ("correlation at offset", s.get("av_correlation")),
                 ("p-value of that peak (shifted-track surrogates; > 0.05: weak evidence)", s.get("av_offset_p_value")),
                 ("correlation at lag 0", s.get("mouth_energy_correlation")),
                 ("AV offset (closures)", s.get("av_offset_closure_frames")),
                 ("phones aligned", len(ls.get("phones", []))),
                 ("bilabial events scored", bil.get("n_events")), ("bilabial hits", bil.get("n_hits")),
                 ("bilabial hit rate", s.get("bilabial_hit_rate")), ("note", ls.get("note"))]
        lip_rows = "".join(f"<tr><td>{esc(k)}</td><td>{_v(v)}</td></tr>" for k, v in items if v is not None)

    prov_rows = "".join(f"<tr><td>{esc(str(k))}</td><td><code>{esc(str(v))}</code></td></tr>"
                        for k, v in provenance.items())
    th_rows = "".join(f"<tr><td><code>{esc(k)}</code></td><td>{_v(float(v))}</td></tr>" for k, v in thresholds.items())
    imgs = lambda arr, alt: "".join(f'<img alt="{esc(alt)} {i + 1}" src="{png_data_uri(a)}">' for i, a in enumerate(arr))
    no_face = s.get("no_face_frames", [])
    notes_html = "".join(f"<li>{esc(n)}</li>" for n in notes)
    vcol = "#1a7f37" if verdict == "PASS" else "#cf222e"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>QC {esc(verdict)} {esc(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0;background:#f6f8fa;color:#24292f}}
header{{background:{vcol};color:#fff;padding:14px 24px}} header h1{{margin:0;font-size:20px}}
.verdict{{font-size:34px;font-weight:700;letter-spacing:1px}} .why{{font-size:14px;margin-top:4px}}
main{{padding:8px 24px 40px}} h2{{font-size:16px;margin:22px 0 6px;border-bottom:1px solid #d0d7de;padding-bottom:3px}}
table{{border-collapse:collapse;background:#fff;font-size:13px}} td,th{{border:1px solid #d0d7de;padding:3px 8px;text-align:left;vertical-align:top}}
tr.fail td{{background:#ffebe9}} tr.fail td.st{{color:#cf222e;font-weight:700}} tr.pass td.st{{color:#1a7f37;font-weight:700}}
tr.na td{{color:#6e7781}} svg.plot{{display:block;margin:6px 0;background:#fff;border:1px solid #d0d7de;max-width:100%;height:auto}}
.row{{display:flex;flex-wrap:wrap;gap:8px}} .imgs img{{margin:3px;border:1px solid #d0d7de;max-width:100%}}
code{{font-size:12px}} .small{{color:#57606a;font-size:12px}}
</style></head><body>
<header><h1>QC report · {esc(title)}</h1><div class="verdict" id="verdict">{esc(verdict)}</div><div class="why">{esc(why)}</div></header>
<main>
<h2>Gates (failing first)</h2>
<table id="gates"><tr><th>check</th><th>threshold key</th><th>value</th><th>required</th><th>result</th><th>reason</th></tr>{''.join(gate_rows)}</table>
<p class="small">Frames {int(fr[0])}–{int(fr[-1])} ({len(fr)}); missing {s.get('frames_missing', 0)};
no face in the render: {len(no_face)} frame(s){(': ' + esc(', '.join(map(str, no_face[:60])))) if no_face else ''}.</p>
{('<ul class="small">' + notes_html + '</ul>') if notes_html else ''}
<h2>Per-frame metrics</h2>
{''.join(plots)}
<div class="row">{''.join(small)}</div>
<h2>Contact sheet: plate | render | difference ×{DIFF_GAIN:g}</h2>
<div class="imgs"><img alt="contact sheet" src="{png_data_uri(sheet)}"></div>
<h2>Worst frames</h2><div class="imgs">{imgs(worst, 'worst frame')}</div>
<h2>Tracking overlays: render landmarks (green) vs target (magenta)</h2><div class="imgs">{imgs(overlays, 'tracking overlay')}</div>
<h2>Lip sync</h2><table>{lip_rows or '<tr><td>no audio analysed</td></tr>'}</table>
<h2>All figures</h2><table id="summary"><tr><th>metric</th><th>value</th><th>meaning</th></tr>{''.join(sum_rows)}</table>
<h2>Thresholds</h2><table>{th_rows}</table>
<h2>Provenance</h2><table id="provenance">{prov_rows}</table>
<p class="small">Portrait Engine {esc(__version__)} · metrics.json beside this page holds every per-frame value.</p>
</main></body></html>
"""

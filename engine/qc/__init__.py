"""Quality control: metrics against the plate and the drive, gates, and the reviewer's report.

* :mod:`engine.qc.stage` -- the full QC: :func:`~engine.qc.stage.run_qc` on any render + plate
  (+ audio, drive file, tracking), :class:`~engine.qc.stage.QcStage` for the shot graph,
  :func:`~engine.qc.stage.shot_qc_inputs` / :func:`~engine.qc.stage.shot_qc_config` for a shot.
* :mod:`engine.qc.measure` (metrics), :mod:`engine.qc.gates` (PASS/FAIL), :mod:`engine.qc.report`
  and :mod:`engine.qc.plots` (the HTML page), :mod:`engine.qc.identity` (dlib embedding),
  :mod:`engine.qc.targets` (drive-file landmark targets), :mod:`engine.qc.media` (render / plate /
  audio readers), :mod:`engine.qc.browser` (headless Chromium check of a report).
"""

"""Audio-driven path: audio/lip-sync analysis (``sync``), phone alignment (``phones``),
audio features (``features``) and the per-actor audio-to-expression model (``a2e``).

Submodules are imported on demand (``from engine.audio.sync import ...``) so that importing
``engine.audio`` pulls in neither torch nor pocketsphinx.
"""

"""The final render: paste-back at plate resolution, mattes, temporal smoothing, colour
management (OpenColorIO) and the delivery EXR passes. The stage is
:class:`engine.stages.render.NeuralRenderStage`."""

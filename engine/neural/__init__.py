"""Neural portrait renderer: generator, losses, training, checkpoints, online inference.

Public entry points (see each module):

* data:       FrameBatch, FrameDataset, FrameCacheWriter / FrameCache, split_holdout
* generator:  GeneratorConfig, PortraitGenerator
* train:      TrainConfig, make_config, Trainer, TrainSpec, run_training
* checkpoint: Checkpoint, ModelMeta
* infer:      Renderer, measure_speed
* evaluate:   evaluate, nearest_neighbour_baseline
* metrics / perceptual: PSNR, SSIM, ST-LPIPS

Submodules are imported lazily by callers; importing this package pulls in nothing heavy.
"""

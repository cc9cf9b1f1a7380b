"""Measuring a model: sample metrics (metrics.py), the digits classifier's features
(digits_features.py), FID with the pytorch-fid Inception (inception.py, fid.py,
torch_checkpoint.py), image grids (image_grid.py) and the evaluators of 2-D and image data sets
(toy.py, images.py). Imports the core, models and data; never training or the config layer."""

"""MonoDETR: the model, its depth predictor and depth-aware transformer, its loss, and the
decoding of its outputs to 3D boxes."""

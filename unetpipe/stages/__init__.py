"""The pipeline's stages, in data-flow order: preprocess, weights/targets, train, predict, segment, measure, evaluate."""

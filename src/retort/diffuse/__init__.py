"""The diffusion-distillation track (in progress): 2-D mixtures with exact teachers and the
distribution metrics the track's evaluation uses."""

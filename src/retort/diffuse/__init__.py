"""The diffusion-distillation track (`track=diffuse`): a diffusion teacher (exact on 2-D mixtures, a
trained network on digits and MNIST) distilled into one- and few-step generators by the methods of
`methods/`, measured by distribution metrics with collapse detectors. The core drives it through
`track.TRACK` (`retort.track`)."""

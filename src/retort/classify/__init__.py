"""The classifier-distillation track (`track=classify`): datasets that need no download, classifier
students and teachers, the classifier KD and self-distillation methods, evaluation by accuracy,
calibration and agreement. The core drives it through `track.TRACK` (`retort.track`)."""

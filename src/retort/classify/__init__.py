"""The classifier-distillation track (retort.track: `track=classify`)."""

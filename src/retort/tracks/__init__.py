"""The tracks (`retort.track`): `lm`, language-model students (tasks, models, rollout, traces, the
LM methods, pass@k evaluation)."""

"""The language-model track: reasoning tasks (`tasks`), causal-LM students and teachers (`models`,
`teachers`), generation and scoring (`rollout`), the trace format and collation (`data`), the LM
methods (`methods`), pass@k evaluation (`eval`), trace curation (`curate`), and the command drivers
`traces`, `teacher` and `demo`. The core drives it through `track.TRACK` (`retort.track`)."""

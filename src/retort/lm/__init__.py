"""The language-model track: reasoning tasks (`tasks`), causal-LM students and teachers (`models`,
`teachers`), generation and scoring (`rollout`), the trace format and collation (`data`), the LM
methods (`methods`), pass@k evaluation (`eval`), trace curation (`curate`), its configs (`config`),
the command drivers `traces`, `teacher`, `compare` (`retort eval`) and `demo`, its own commands
(`cli`), report sections (`report`) and Python API (`api`). The core drives it through
`track.TRACK` (`retort.track`)."""

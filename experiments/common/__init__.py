"""The shared engine every study runs on. A study imports these and its own parts, never another study.

- ``config``: ``SweepConfig`` (what every study's Config holds) and which settings name a run (``unhashed``);
- ``sweep``: ``run_sweep(cfg, Study(...))``, the skeleton of every study's main, run directories, result files,
  the CLI wrapper;
- ``trials``: Ray, the agent actors that serve the trials, the Tune grid that writes each row at once;
- ``models``: the model cache (autoencoders, CALMs, token baselines, JSCC adapters trained once and reused);
- ``links``: fitting the protocols of a link at each budget, passages, game seeds, the oracle's rate pick;
- ``multiagent``: what the many-agent studies share (link config, candidates, per-trial metrics);
- ``lm_budget``: training language models to a FLOPs budget and scoring them (the scaling studies);
- ``tables``: per-passage metrics, intervals, SNR crossings and labels;
- ``probes``: chunk sets, token classes and linear probes of vectors.
"""

"""The shared engine every study runs on: the sweep skeleton and Ray (``sweep``), the CLI (``cli``), tables and
intervals (``tables``), the model cache (``models``), link fitting (``links``), multi-agent helpers
(``multiagent``) and the vector probes (``probes``). A study imports these and its own parts, never another study."""

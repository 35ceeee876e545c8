"""backdoor-eval: systematic backdoor data-poisoning experiments on image classifiers.

Reproduces Truong et al., "Systematic Evaluation of Backdoor Data Poisoning
Attacks on Image Classifiers" (CVPR-W 2020). One module per concept: data,
splits, triggers, lv_fit, poison, models, regularizers, train, phase,
evaluate, experiments, tables, figures; shared pieces in names (the
vocabulary), config (the one config loader), layout (every results path),
seeding and hashing. The CLI (``backdoor_eval.cli``) only parses arguments;
the Snakemake rules call it. docs/architecture.md has the map.
"""

__version__ = "0.1.0"

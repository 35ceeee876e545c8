"""backdoor-eval: systematic backdoor data-poisoning experiments on image classifiers.

Reproduces Truong et al., "Systematic Evaluation of Backdoor Data Poisoning
Attacks on Image Classifiers" (CVPR-W 2020). One module per concept:
data, splits, triggers, poison, models, regularizers, train, evaluate,
experiments, tables, figures; the CLI (``backdoor_eval.cli``) is the only
place that reads arguments, and rules call it.
"""

__version__ = "0.1.0"

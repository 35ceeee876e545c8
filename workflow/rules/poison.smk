# Poisoning (docs/decisions.md#poison-sampling): one overlay per (dataset, trigger,
# alpha, strategy, poison class, source, poison rate, split); with a split per
# seed it is shared by every model and regularizer, with a split per run it is
# the run's own.


rule poison:
    input:
        unpack(get_poison_input),
    output:
        poisoned=directory(PATHS.poisoned),
    log:
        log_of("poison", POISON_ID_TEMPLATE),
    benchmark:
        benchmark_of("poison", POISON_ID_TEMPLATE)
    conda:
        "../../envs/backdoor-eval.yaml"
    params:
        options=get_poison_options,
    shell:
        "backdoor-eval poison --store {input.store:q} --partitions {input.partitions:q}"
        " --alpha {wildcards.alpha} --poison-class {wildcards.poison_class:q}"
        " --poison-rate {wildcards.poison_rate} --strategy {wildcards.strategy} --split {wildcards.split}"
        " {params.options} --out {output.poisoned:q} > {log:q} 2>&1"

# Poisoning (SPEC 2): one overlay per (dataset, trigger, alpha, strategy, poison
# class, source, poison rate, seed), shared by every model and regularizer.


rule poison:
    input:
        unpack(poison_input),
    output:
        directory(POISONED),
    log:
        f"{RESULTS}/logs/poison/{POISON}.log",
    benchmark:
        f"{RESULTS}/benchmarks/poison/{POISON}.tsv"
    conda:
        "../../envs/backdoor-eval.yaml"
    params:
        options=poison_options,
    shell:
        "backdoor-eval poison --store {input.store:q} --partitions {input.partitions:q}"
        " --trigger {wildcards.trigger:q} --alpha {wildcards.alpha} --poison-class {wildcards.poison_class:q}"
        " --poison-rate {wildcards.poison_rate} --strategy {wildcards.strategy} --seed {wildcards.seed}"
        " {params.options} --out {output:q} > {log:q} 2>&1"

# Pretraining (docs/decisions.md#pretraining): a backbone trained once on a dataset of the config,
# for the models whose entry says `init: <name>`. Its file sits beside the fetched weights, an
# input of every train job that starts from it; its name carries the pretraining's fingerprint,
# so a changed pretraining makes a new file and those train jobs run again.


rule pretrain:
    input:
        unpack(get_pretrain_store),
    output:
        weights=f"{pretrain.PRETRAINED_DIR}/{{pretraining}}.safetensors",
        manifest=f"{pretrain.PRETRAINED_DIR}/{{pretraining}}.json",
    log:
        log_of("pretrain", "{pretraining}"),
    benchmark:
        benchmark_of("pretrain", "{pretraining}")
    wildcard_constraints:
        pretraining=exactly(
            path.removeprefix(f"{pretrain.PRETRAINED_DIR}/").removesuffix(".safetensors") for path in PRETRAININGS
        ),
    conda:
        "../../envs/backdoor-eval.yaml"
    threads: job_resource("pretrain", "threads")
    resources:
        gpu=1,
        mem_mb=job_resource("pretrain", "mem_mb"),
        runtime=lambda wildcards, attempt: job_resource("pretrain", "runtime") * attempt,
    params:
        options=get_pretrain_options,
    shell:
        "backdoor-eval pretrain --store {input.store:q} {params.options}"
        " --threads {threads} --out-weights {output.weights:q} --out-manifest {output.manifest:q} > {log:q} 2>&1"

# Training (SPEC 4): the poison phase with early stopping, clean retraining,
# and the per-run summary. train/retrain hold one GPU each (resources: gpu=1;
# cap them with --resources gpu=N) and take a GPU slot via --gpu-lock-dir.


localrules:
    evaluate,


rule train:
    input:
        store=STORE,
        partitions=PARTITIONS,
        poisoned=POISONED,
    output:
        model=model_file(f"{RUN_DIR}/poison/model.pt"),
        epochs=f"{RUN_DIR}/poison/epochs.parquet",
        final=f"{RUN_DIR}/poison/final.json",
    log:
        f"{RESULTS}/logs/train/{RUN}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{RUN}.tsv"
    conda:
        "../../envs/backdoor-eval.yaml"
    threads: job_resource("train", "threads", 1)
    resources:
        gpu=1,
        mem_mb=job_resource("train", "mem_mb", 16000),
        runtime=job_resource("train", "runtime", 720),
    params:
        out=f"{RUN_DIR}/poison",
        checkpoints=f"{CHECKPOINTS}/poison",
        options=train_options,
        device=config["device"],
        gpu=gpu_option(),
    shell:
        "backdoor-eval train --store {input.store:q} --partitions {input.partitions:q} --poisoned {input.poisoned:q}"
        " {params.options} --seed {wildcards.seed} --out {params.out:q}"
        " --checkpoints {params.checkpoints:q} --device {params.device} --threads {threads} {params.gpu}"
        " > {log:q} 2>&1"


rule retrain:
    input:
        store=STORE,
        partitions=PARTITIONS,
        poisoned=POISONED,
        model=f"{RUN_DIR}/poison/model.pt",
        final=f"{RUN_DIR}/poison/final.json",
    output:
        model=model_file(f"{RUN_DIR}/clean/model.pt"),
        epochs=f"{RUN_DIR}/clean/epochs.parquet",
        final=f"{RUN_DIR}/clean/final.json",
    log:
        f"{RESULTS}/logs/retrain/{RUN}.log",
    benchmark:
        f"{RESULTS}/benchmarks/retrain/{RUN}.tsv"
    conda:
        "../../envs/backdoor-eval.yaml"
    threads: job_resource("retrain", "threads", 1)
    resources:
        gpu=1,
        mem_mb=job_resource("retrain", "mem_mb", 16000),
        runtime=job_resource("retrain", "runtime", 120),
    params:
        init=lambda wildcards, input: os.path.dirname(input.final),
        out=f"{RUN_DIR}/clean",
        checkpoints=f"{CHECKPOINTS}/clean",
        options=train_options,
        device=config["device"],
        gpu=gpu_option(),
    shell:
        "backdoor-eval retrain --store {input.store:q} --partitions {input.partitions:q} --poisoned {input.poisoned:q}"
        " --init {params.init:q} {params.options} --seed {wildcards.seed} --out {params.out:q}"
        " --checkpoints {params.checkpoints:q} --device {params.device} --threads {threads} {params.gpu}"
        " > {log:q} 2>&1"


rule evaluate:
    # A few seconds of pandas: runs where the results are, not on a cluster node.
    input:
        unpack(evaluate_input),
    output:
        summary=f"{RUN_DIR}/summary.parquet",
        epochs=f"{RUN_DIR}/epochs.parquet",
    log:
        f"{RESULTS}/logs/evaluate/{RUN}.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate/{RUN}.tsv"
    conda:
        "../../envs/backdoor-eval.yaml"
    params:
        poison=f"{RUN_DIR}/poison",
        options=evaluate_options,
    shell:
        "backdoor-eval evaluate --poison {params.poison:q} {params.options}"
        " --out {output.summary:q} --out-epochs {output.epochs:q} > {log:q} 2>&1"

# Results: membership (which run belongs to which experiment), the tidy
# runs/epochs tables, and the paper's tables and figures.


localrules:
    membership,


rule membership:
    # Written from the config alone; re-run when the experiments change (params).
    output:
        f"{RESULTS}/membership.json",
    log:
        f"{RESULTS}/logs/membership.log",
    benchmark:
        f"{RESULTS}/benchmarks/membership.tsv"
    conda:
        "../../envs/backdoor-eval.yaml"
    params:
        config=as_json(membership_config()),
        results=lambda wildcards, output: os.path.dirname(output[0]),
    shell:
        "backdoor-eval membership --config-json {params.config:q} --results-dir {params.results:q}"
        " --out {output:q} > {log:q} 2>&1"


rule aggregate:
    input:
        membership=f"{RESULTS}/membership.json",
        runs=run_results(),
    output:
        runs=f"{RESULTS}/runs.parquet",
        epochs=f"{RESULTS}/epochs.parquet",
    log:
        f"{RESULTS}/logs/aggregate.log",
    benchmark:
        f"{RESULTS}/benchmarks/aggregate.tsv"
    conda:
        "../../envs/backdoor-eval.yaml"
    shell:
        "backdoor-eval aggregate --membership {input.membership:q} --out-runs {output.runs:q}"
        " --out-epochs {output.epochs:q} > {log:q} 2>&1"


if TABLES:

    rule tables:
        input:
            **table1_input(),
            runs=f"{RESULTS}/runs.parquet",
        output:
            [
                report(
                    path,
                    caption=f"../report/{os.path.basename(path).split('.')[0]}.rst",
                    category="Tables",
                )
                for path in table_files()
            ],
        log:
            f"{RESULTS}/logs/tables.log",
        benchmark:
            f"{RESULTS}/benchmarks/tables.tsv"
        conda:
            "../../envs/backdoor-eval.yaml"
        params:
            out_dir=lambda wildcards, output: os.path.dirname(output[0]),
            only=",".join(TABLES),
            outputs=as_json(OUTPUTS),
            table1=table1_options,
        shell:
            "backdoor-eval tables --runs {input.runs:q} --out-dir {params.out_dir:q} --only {params.only}"
            " --outputs {params.outputs:q} {params.table1} > {log:q} 2>&1"


if FIGURES:

    rule figures:
        input:
            runs=f"{RESULTS}/runs.parquet",
            epochs=f"{RESULTS}/epochs.parquet",
        output:
            [
                report(
                    path,
                    caption=f"../report/{os.path.basename(path).split('.')[0]}.rst",
                    category="Figures",
                )
                for path in figure_files()
            ],
        log:
            f"{RESULTS}/logs/figures.log",
        benchmark:
            f"{RESULTS}/benchmarks/figures.tsv"
        conda:
            "../../envs/backdoor-eval.yaml"
        params:
            out_dir=lambda wildcards, output: os.path.dirname(output[0]),
            only=",".join(FIGURES),
            outputs=as_json(OUTPUTS),
        shell:
            "backdoor-eval figures --runs {input.runs:q} --epochs {input.epochs:q} --out-dir {params.out_dir:q}"
            " --only {params.only} --outputs {params.outputs:q} > {log:q} 2>&1"


if config.get("gallery"):

    rule gallery:
        input:
            **gallery_input(),
        output:
            png=report(
                f"{RESULTS}/figures/fig2.png",
                caption="../report/fig2.rst",
                category="Figures",
            ),
            pdf=f"{RESULTS}/figures/fig2.pdf",
        log:
            f"{RESULTS}/logs/gallery.log",
        benchmark:
            f"{RESULTS}/benchmarks/gallery.tsv"
        conda:
            "../../envs/backdoor-eval.yaml"
        params:
            options=gallery_options(),
        shell:
            "backdoor-eval gallery --store {input.store:q} --partitions {input.partitions:q} --lv-fit {input.lv_fit:q}"
            " {params.options} --out {output.png:q} > {log:q} 2>&1"

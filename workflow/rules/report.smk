# Results: membership (which run belongs to which experiment), the tidy
# runs/epochs tables, and the paper's tables and figures. Each table and
# figure is one job with its files named here.


# Seconds of pandas and matplotlib each: on a cluster they run where the results are, not as jobs.
localrules:
    membership,
    aggregate,
    retraining_table,
    experiment_table,
    figure,
    retraining_budget,


rule membership:
    # Written from the config alone; re-run when the experiments change (params).
    output:
        membership=PATHS.membership,
    log:
        log_of("membership", "membership"),
    benchmark:
        benchmark_of("membership", "membership")
    conda:
        "../../envs/backdoor-eval.yaml"
    params:
        config=as_json(get_membership_config()),
        # The results folder the listed run files live in: the membership file's own folder.
        results=lambda wildcards, output: os.path.dirname(output.membership),
    shell:
        "backdoor-eval membership --config-json {params.config:q} --results-dir {params.results:q}"
        " --out {output.membership:q} > {log:q} 2>&1"


rule aggregate:
    # Reads the run files the membership document lists: the same files as its inputs.
    input:
        unpack(get_run_results),
        membership=PATHS.membership,
    output:
        runs=PATHS.runs_table,
        epochs=PATHS.epochs_table,
    log:
        log_of("aggregate", "aggregate"),
    benchmark:
        benchmark_of("aggregate", "aggregate")
    conda:
        "../../envs/backdoor-eval.yaml"
    shell:
        "backdoor-eval aggregate --membership {input.membership:q} --out-runs {output.runs:q}"
        " --out-epochs {output.epochs:q} > {log:q} 2>&1"


if VIEW.table1:

    localrules:
        table1,

    rule table1:
        input:
            store=PATHS.store.format(dataset=VIEW.table1["dataset"]),
        output:
            csv=PATHS.table("table1", "csv"),
            md=report(PATHS.table("table1", "md"), caption="../report/table1.rst", category="Tables"),
        log:
            log_of("table1", "table1"),
        benchmark:
            benchmark_of("table1", "table1")
        conda:
            "../../envs/backdoor-eval.yaml"
        params:
            options=get_table1_options(),
        shell:
            "backdoor-eval table1 --store {input.store:q} {params.options}"
            " --out-csv {output.csv:q} --out-md {output.md:q} > {log:q} 2>&1"


rule retraining_table:
    # Tables 2 and 3: before ("No") and after ("Yes") clean retraining, with run counts per cell.
    input:
        runs=PATHS.runs_table,
    output:
        csv=PATHS.table("{table}", "csv"),
        md=report(PATHS.table("{table}", "md"), caption="../report/table.rst", category="Tables"),
        counts_csv=PATHS.table("{table}_n", "csv"),
        counts_md=PATHS.table("{table}_n", "md"),
    log:
        log_of("table", "{table}"),
    benchmark:
        benchmark_of("table", "{table}")
    wildcard_constraints:
        table=one_of(RETRAINING_TABLES),
    conda:
        "../../envs/backdoor-eval.yaml"
    params:
        experiments=get_output_experiments,
    shell:
        "backdoor-eval table --name {wildcards.table} --experiments {params.experiments:q} --runs {input.runs:q}"
        " --out-csv {output.csv:q} --out-md {output.md:q}"
        " --out-counts-csv {output.counts_csv:q} --out-counts-md {output.counts_md:q} > {log:q} 2>&1"


rule experiment_table:
    # Tables 4 and 5 (one-to-one against many-to-one) and the optimizer table: one experiment each.
    input:
        runs=PATHS.runs_table,
    output:
        csv=PATHS.table("{table}", "csv"),
        md=report(PATHS.table("{table}", "md"), caption="../report/table.rst", category="Tables"),
    log:
        log_of("table", "{table}"),
    benchmark:
        benchmark_of("table", "{table}")
    wildcard_constraints:
        table=one_of(EXPERIMENT_TABLES),
    conda:
        "../../envs/backdoor-eval.yaml"
    params:
        experiments=get_output_experiments,
    shell:
        "backdoor-eval table --name {wildcards.table} --experiments {params.experiments:q} --runs {input.runs:q}"
        " --out-csv {output.csv:q} --out-md {output.md:q} > {log:q} 2>&1"


rule figure:
    input:
        runs=PATHS.runs_table,
    output:
        png=report(PATHS.figure("{figure}", "png"), caption="../report/figure.rst", category="Figures"),
        pdf=PATHS.figure("{figure}", "pdf"),
    log:
        log_of("figure", "{figure}"),
    benchmark:
        benchmark_of("figure", "{figure}")
    wildcard_constraints:
        figure=one_of(FIGURES),
    conda:
        "../../envs/backdoor-eval.yaml"
    params:
        experiments=get_output_experiments,
    shell:
        "backdoor-eval figure --name {wildcards.figure} --experiments {params.experiments:q} --runs {input.runs:q}"
        " --out-png {output.png:q} --out-pdf {output.pdf:q} > {log:q} 2>&1"


rule retraining_budget:
    # Clean retraining epoch by epoch: ASR after 0, 5 and the last epochs, and the curves.
    input:
        runs=PATHS.runs_table,
        epochs=PATHS.epochs_table,
    output:
        csv=PATHS.table("retraining_budget", "csv"),
        md=report(PATHS.table("retraining_budget", "md"), caption="../report/table.rst", category="Tables"),
        png=report(PATHS.figure("retraining_curves", "png"), caption="../report/figure.rst", category="Figures"),
        pdf=PATHS.figure("retraining_curves", "pdf"),
    log:
        log_of("retraining_budget", "retraining_budget"),
    benchmark:
        benchmark_of("retraining_budget", "retraining_budget")
    conda:
        "../../envs/backdoor-eval.yaml"
    params:
        experiments=lambda wildcards: "+".join(OUTPUTS["retraining_budget"]),
    shell:
        "backdoor-eval retraining-budget --experiments {params.experiments:q} --runs {input.runs:q}"
        " --epochs {input.epochs:q} --out-csv {output.csv:q} --out-md {output.md:q}"
        " --out-png {output.png:q} --out-pdf {output.pdf:q} > {log:q} 2>&1"


if VIEW.gallery:

    localrules:
        gallery,

    rule gallery:
        input:
            **get_gallery_input(),
        output:
            png=report(PATHS.figure("fig2", "png"), caption="../report/fig2.rst", category="Figures"),
            pdf=PATHS.figure("fig2", "pdf"),
        log:
            log_of("gallery", "fig2"),
        benchmark:
            benchmark_of("gallery", "fig2")
        conda:
            "../../envs/backdoor-eval.yaml"
        params:
            options=get_gallery_options(),
        shell:
            "backdoor-eval gallery --store {input.store:q} --partitions {input.partitions:q}"
            " {params.options} --out-png {output.png:q} --out-pdf {output.pdf:q} > {log:q} 2>&1"

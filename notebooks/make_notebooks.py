"""Write notebooks/01..12 (clean, no outputs) with promu_lib.notebook.write_notebook."""

from promu_lib import notebook
from promu_lib.paths import project_root

NB = project_root() / "notebooks"

PARAMS_COMMON = '''profile = "tiny"
config_file = None
force = False  # results are cached by config hash; delete run.output_dir to recompute
seeds = None  # None: cfg.run.seeds; e.g. [0] to cut work'''

def setup(extra: str = "", seeds: bool = True, scope: dict[str, str] | None = None) -> str:
    """The set-up cell: imports (``extra``: more of promu_lib), config, seeds, output places."""
    imports = ", ".join(["experiments", *extra.split(), "notebook", "report", "tables"])
    lines = [
        "from IPython.display import Markdown, display",
        "",
        f"from promu_lib import {imports}",
        "from promu_lib import figures as figs",
        "",
        "cfg = notebook.setup(profile, config_file)",
    ]
    if seeds:
        lines += [
            "if seeds is not None:  # before any job: seeds name the jobs and every table's caption",
            '    cfg = cfg.replace(**{"run.seeds": list(seeds)})',
        ]
    for name, attr in (scope or {}).items():  # parameters left None follow the profile's scope
        lines.append(f"{name} = list({name} if {name} is not None else cfg.scope.{attr})")
    lines += ["figures = notebook.figures_dir(cfg)", "provenance = report.provenance(cfg)"]
    return "\n".join(lines)


PARAMS_NO_SEEDS = PARAMS_COMMON.rsplit("\n", 1)[0]


def table_outputs(name: str) -> str:
    return f'figures / "{name}.csv", figures / "{name}.md", figures / "{name}.config.json"'


def figure_outputs(name: str) -> str:
    return f'figures / "{name}.png", figures / "{name}.pdf"'


def expect(*items: str) -> str:
    return "notebook.expect_outputs([\n    " + ",\n    ".join(items) + ",\n])"


NOTEBOOKS = {}

NOTEBOOKS["01_mining.ipynb"] = [
    ("markdown", """
# 01 · Label mining: nouns, prompts and soft pseudo-labels

PROMU (Sec. 4.2-4.3) needs no labelled pre-training data: spaCy finds the most frequent nouns
of the caption corpus (the entity labels), the relation labels are fixed phrases, and a
teacher scores every detected object against the entity prompts ("This is an image of
[ENTITY].", Eq. 6) and every whole image against the relation prompts (Eq. 9). The softmax of
those scores are the soft pseudo-labels that the COE and CIR losses of stage 02 learn from.
The stage is cached by the data and mining config; stage 02 reuses it.
"""),
    ("parameters", PARAMS_NO_SEEDS + "\nn_examples = 6  # caption images in the figure"),
    ("code", setup("inspect mining", seeds=False)),
    ("markdown", "## Mine (or read the cached labels)"),
    ("code", """
labels = mining.load_pseudo_labels(mining.mine_labels(cfg))
display(Markdown(tables.prompts_markdown(labels)))
"""),
    ("markdown", """
## How good are the pseudo-labels?

In the toy world the generator knows what it drew, so the top-1 pseudo-label of each box (and
of each image that draws a relation) can be checked against it. The papers give no such
number: real captions have no ground truth.
"""),
    ("code", """
truth = inspect.read_truth_rows(cfg, "pretrain", "train")
agreement = tables.pseudo_label_agreement(labels, truth) if truth else None
summary = tables.mining_summary(cfg, labels, agreement)
nouns = tables.nouns_table(cfg, labels)
for table in (summary, nouns):
    table.save(figures, provenance)
    display(table)
"""),
    ("markdown", "## Pseudo-labels on a few caption images"),
    ("code", """
fig = figs.mining_examples_figure(notebook.data_layout(cfg), labels, n_examples, cfg.run.seeds[0])
saved = report.save_figure(fig, "mining_examples", figures)
"""),
    ("markdown", """
**What to see.** Each box carries the noun the teacher finds most likely and its probability;
the line under the image is the most likely relation. Soft labels keep the whole distribution,
so a box the teacher is unsure about teaches the encoder little (compare the agreement with
the chance level above). With the `paper` profile the same cells show YOLO boxes and CLIP
scores on your caption corpus.
"""),
    ("code", expect(table_outputs("mining_summary"), table_outputs("mining_nouns"),
                    figure_outputs("mining_examples"))),
]

NOTEBOOKS["02_pretrain.ipynb"] = [
    ("markdown", """
# 02 · Pre-training: the fusion encoder with ITM, CIT, COE and CIR

PROMU pre-trains its fusion encoder on image-caption pairs with four losses (Eq. 11):
image-text matching (ITM), contrastive image-text alignment (CIT), entity-object alignment
against the soft pseudo-labels of stage 01 (COE) and relation-image alignment (CIR). Each
variant below switches losses off or hardens the labels; the fine-tuning stages start from
these checkpoints (Table 1's ablations, Table 2). Runs are cached by config hash.
"""),
    ("parameters", PARAMS_NO_SEEDS
     + '\nvariants = ["promu", "no-coe", "no-cir", "hard", "align-only"]  # PRETRAIN_VARIANTS keys'),
    ("code", setup(seeds=False)),
    ("markdown", "## Pre-train every variant (or read the cached runs)"),
    ("code", """
print({v: experiments.PRETRAIN_VARIANTS[v] for v in variants})
results = experiments.run_jobs(cfg, [experiments.Pretrain(v) for v in variants])
histories = {v: tables.pretrain_history(results[experiments.Pretrain(v)]) for v in variants}
"""),
    ("markdown", "## Losses"),
    ("code", """
summary = tables.pretrain_summary(cfg, histories)
summary.save(figures, provenance)
display(summary)
fig = figs.pretrain_losses_figure(histories, main="promu" if "promu" in variants else variants[0])
saved = report.save_figure(fig, "pretrain_losses", figures)
"""),
    ("markdown", """
**What to see.** Each loss should fall from its chance level (ITM: log 2 for balanced
pairs; CIT, COE, CIR: the log of the number of candidates) as the encoder learns to match
captions and images and to name objects and relations; a variant without a loss simply has no
curve for it, so the totals of different variants are not on one scale.
"""),
    ("code", expect(table_outputs("pretrain_summary"), figure_outputs("pretrain_losses"))),
]

NOTEBOOKS["03_finetune.ipynb"] = [
    ("markdown", """
# 03 · Fine-tuning: every model of Table 1 on every dataset

MNER (Twitter-2015/2017) is tagged by a CRF over the encoder's word states, MRE (MNRE) is
classified from the states at the entity markers `<s>` and `<o>`. Every model trains with the
same schedule, keeps the epoch with the best dev F1 and is tested once at that epoch. This
stage runs all of Table 1's fine-tuning jobs (the later stages read them from the cache) and
shows how dev F1 moves per epoch.
"""),
    ("parameters", PARAMS_COMMON + '\ndatasets = None  # None: the profile\'s scope (cfg.scope.datasets)'),
    ("code", setup(scope={"datasets": "datasets"})),
    ("markdown", "## Fine-tune (or read the cached runs)"),
    ("code", """
from promu_lib.train.finetune import summarize

rows = experiments.TABLE1_ROWS
jobs = tables.row_jobs(rows, datasets, cfg.run.seeds)
results = tables.finetune_results(experiments.run_jobs(cfg, jobs))
for job in jobs:
    print(summarize(results[job]))
"""),
    ("markdown", "## Dev F1 per epoch and at the selected epoch"),
    ("code", """
summary = tables.finetune_summary(cfg, rows, results, datasets)
summary.save(figures, provenance)
display(summary)
fig = figs.dev_curves_figure(results, rows, datasets, seed=cfg.run.seeds[0])
saved = report.save_figure(fig, "finetune_curves", figures)
"""),
    ("markdown", """
**What to see.** The curves show whether the schedule is long enough (still rising at the last
epoch) and how early the pre-trained encoders get ahead of the same encoder started from
scratch. Test scores are in Table 1 (stage 04).
"""),
    ("code", expect(table_outputs("finetune_summary"), figure_outputs("finetune_curves"))),
]

NOTEBOOKS["04_table1.ipynb"] = [
    ("markdown", """
# 04 · Table 1: main results and ablations

PROMU's Table 1: test precision, recall and F1 of each model on Twitter-2015, Twitter-2017 and
MNRE, mean ± std over seeds, with the paper's numbers beside them. Rows that the paper fills
with external systems are stood in for by models of this repository (see the row names and
`promu_lib.experiments`): the text-only BERT-CRF / MTB, HVPNeT, the fusion model without
pre-training, the fusion model pre-trained with the alignment losses only (the CLIP/BLIP-style
rows), PROMU, and PROMU without each of its parts.
"""),
    ("parameters", PARAMS_COMMON + '\ndatasets = None  # None: the profile\'s scope (cfg.scope.datasets)'),
    ("code", setup(scope={"datasets": "datasets"})),
    ("markdown", "## Run (cached by stage 03) and tabulate"),
    ("code", """
rows = experiments.TABLE1_ROWS
results = experiments.run_jobs(cfg, tables.row_jobs(rows, datasets, cfg.run.seeds))
table1 = tables.results_table(
    cfg, "table1", rows, results, datasets,
    paper=("promu", "table1_prf"), paper_std=("promu", "table1_f1_std"),
    title="Main results: test P/R/F1", paper_source="PROMU Table 1",
)
table1.save(figures, provenance)
display(table1)
fig = figs.table_bars(table1, title="Table 1: test F1")
saved = report.save_figure(fig, "table1_f1", figures)
"""),
    ("markdown", """
## The paper's claims, checked on these numbers

Each line gives the measured F1 gap of two rows per dataset (mean over seeds) and the gap in
the paper where the paper has both rows.
"""),
    ("code", """
display(Markdown("\\n".join(f"- {s}" for s in tables.table1_claims(table1, rows))))
"""),
    ("markdown", """
**How to read it.** The paper's claims are orderings (multimodal above text-only, pre-training
above none, each ablation below full PROMU, soft labels above hard ones); the lines above say
whether this run reproduces each ordering and by how much. Gaps smaller than the seeds' spread
are not evidence either way; toy-world numbers are not comparable to the paper's.
"""),
    ("code", expect(table_outputs("table1"), figure_outputs("table1_f1"))),
]

NOTEBOOKS["05_table2.ipynb"] = [
    ("markdown", """
# 05 · Table 2: pre-training on top of another fusion model

PROMU's Table 2 adds each pre-training to MMIB, a strong fusion model. MMIB is not built here:
HVPNeT stands in for it, its BERT initialised from the text encoder of a pre-trained fusion
encoder (alignment-only or PROMU). The paper's MMIB rows are shown beside for reference only.
"""),
    ("parameters", PARAMS_COMMON + '\ndatasets = None  # None: the profile\'s scope (cfg.scope.datasets)'),
    ("code", setup(scope={"datasets": "datasets"})),
    ("markdown", "## Run and tabulate"),
    ("code", """
rows = experiments.TABLE2_ROWS
results = experiments.run_jobs(cfg, tables.row_jobs(rows, datasets, cfg.run.seeds))
table2 = tables.results_table(
    cfg, "table2", rows, results, datasets, paper=("promu", "table2_f1"), metrics=("F1",),
    title="Pre-training added to a fusion model: test F1 (HVPNeT stands in for MMIB)",
    paper_source="PROMU Table 2 (MMIB rows)",
)
table2.save(figures, provenance)
display(table2)
fig = figs.table_bars(table2, title="Table 2: test F1")
saved = report.save_figure(fig, "table2_f1", figures)
for better in rows[1:]:
    print(tables.compare_rows(table2, better.name, rows[0].name).sentence())
print(tables.compare_rows(table2, rows[2].name, rows[1].name).sentence())
"""),
    ("markdown", """
**How to read it.** The paper reports that PROMU pre-training helps MMIB more than the other
pre-training methods; the printed gaps say whether pre-training the text encoder that HVPNeT
starts from does the same here. Only the text encoder transfers (HVPNeT has no fusion encoder
to initialise), so a smaller effect than the paper's is expected.
"""),
    ("code", expect(table_outputs("table2"), figure_outputs("table2_f1"))),
]

NOTEBOOKS["06_table3.ipynb"] = [
    ("markdown", """
# 06 · Table 3: prompt designs

Two entity templates, (1) "This is an image of [ENTITY]." and (2) "An image of [ENTITY] is
shown here.", times three relation templates, (A) "This image shows the relation of
[RELATION].", (B) "The relation of [RELATION] is shown in this image." and (C) "The relation
between the objects in the image is [RELATION].": each pair mines its own pseudo-labels (the
teacher is shared), pre-trains PROMU and fine-tunes it. Pair 1+A is Table 1's PROMU row.
"""),
    ("parameters", PARAMS_COMMON + '\ndatasets = None  # None: the profile\'s scope (cfg.scope.table3_datasets)'),
    ("code", setup("mining", scope={"datasets": "table3_datasets"})),
    ("markdown", "## The templates (paper numbering)"),
    ("code", """
for name, e, r in tables.template_pairs():
    print(f"{name}: {mining.ENTITY_TEMPLATES[e]!r} + {mining.RELATION_TEMPLATES[r]!r}")
"""),
    ("markdown", "## Run and tabulate"),
    ("code", """
results = experiments.run_jobs(cfg, tables.template_jobs(datasets, cfg.run.seeds))
table3 = tables.template_table(cfg, results, datasets)
table3.save(figures, provenance)
display(table3)
fig = figs.table_bars(table3, title="Table 3: test F1 per prompt pair")
saved = report.save_figure(fig, "table3_f1", figures)
print(tables.compare_rows(table3, "1+A", "2+B").sentence())
"""),
    ("markdown", """
**How to read it.** The paper finds active-voice prompts slightly better than passive ones,
within 1 F1; the printed line compares the all-active pair 1+A with the all-passive 2+B. On
the toy world the teacher is trained from scratch on bag-of-words captions, so the wording of
a template can only matter through the few words that differ.
"""),
    ("code", expect(table_outputs("table3"), figure_outputs("table3_f1"))),
]

NOTEBOOKS["07_fig3_tsne.ipynb"] = [
    ("markdown", """
# 07 · Fig 3: are entities near their objects, and relations near their images?

PROMU's Fig 3 projects fused text and image embeddings of test posts with t-SNE: after
entity-object and relation-image alignment, an entity's embedding should lie among the
embeddings of its object, coloured by entity type, and a post's relation embedding among image
embeddings of the same relation. Here: the fusion model fine-tuned from scratch vs from PROMU
pre-training (the Table 1 checkpoints). Entity = mean fused state of the mention's words;
object = mean fused state of the image patches inside the object's box (the toy world's
truth says which object is whose); relation = fused [CLS]; image = mean fused patch.
"""),
    ("parameters", PARAMS_COMMON
     + '\nner_dataset = "twitter2015"\nn_posts = 50  # test posts per panel (the paper: 50)'),
    ("code", setup("inspect")),
    ("markdown", "## Fine-tuned models (cached by stage 03) and their embeddings"),
    ("code", """
seed = cfg.run.seeds[0]
models = {
    "no pre-training": (tables.scratch_job(ner_dataset, seed), tables.scratch_job("mnre", seed)),
    "PROMU": (tables.promu_job(ner_dataset, seed), tables.promu_job("mnre", seed)),
}
experiments.run_jobs(cfg, [job for pair in models.values() for job in pair])
panels = inspect.tsne_panels(cfg, models, n_posts)
"""),
    ("markdown", "## t-SNE, and a number for what the picture shows"),
    ("code", """
fig = figs.tsne_figure({f"{m}: {k}": e for m, per in panels.items() for k, e in per.items()}, seed)
saved = report.save_figure(fig, "fig3_tsne", figures)
pairs = {"entity-object": ("entity", "object"), "relation-image": ("relation", "image")}
consistency = tables.consistency_table(cfg, panels, pairs)
consistency.save(figures, provenance)
display(consistency)
"""),
    ("markdown", """
**What to see.** Colours are classes, markers modalities. Alignment shows as text and image
markers of one colour sharing a neighbourhood; the table counts it: how often the nearest
image embedding of a text embedding has the same class. The paper shows the picture only, for
PROMU vs MMIB/BLIP, so there is no published number to compare with.
"""),
    ("code", expect(figure_outputs("fig3_tsne"), table_outputs("fig3_consistency"))),
]

NOTEBOOKS["08_fig4_tail.ipynb"] = [
    ("markdown", """
# 08 · Fig 4: gains on the tail relations and on ORG / MISC

PROMU's Fig 4: F1 gains from pre-training are largest where data is scarce: on the 8 rarest
relations of MNRE (+25.5% on average vs +9.9% over all relations) and on ORG and MISC (+14.0%,
+9.5% vs +9.7% / +6.0% over all types). Here the gain is PROMU pre-training over the same
fusion model fine-tuned from scratch (Table 1's runs), per seed; the tail is the 8 relations
with the fewest training lines among those in the test split.
"""),
    ("parameters", PARAMS_COMMON + '\ndatasets = None  # None: the profile\'s scope (cfg.scope.datasets)'),
    ("code", setup(scope={"datasets": "datasets"})),
    ("markdown", "## Run (cached by stage 03) and compute the gains"),
    ("code", """
results = experiments.run_jobs(cfg, tables.scratch_vs_promu_jobs(datasets, cfg.run.seeds))
counts = tables.train_relation_counts(cfg) if "mnre" in datasets else None
ner = [d for d in datasets if d != "mnre"]
gains = tables.fig4_gains(results, cfg.run.seeds, counts, ner_datasets=ner)
print("tail relations (train lines):", {r: counts[r] for r in gains.tail} if counts else None)
table = tables.fig4_table(cfg, gains)
table.save(figures, provenance)
display(table)
fig = figs.fig4_figure(gains)
saved = report.save_figure(fig, "fig4_tail", figures)
"""),
    ("markdown", """
**How to read it.** The paper's percentages are relative F1 gains; the table gives both the
gain in F1 points and in percent of the scratch model's F1 (a class the scratch model never
gets right has no relative gain). Bars in the figure are F1 points per class, mean over seeds.
With a few test lines per tail relation, single-class gains are noisy.
"""),
    ("code", expect(table_outputs("fig4_gains"), figure_outputs("fig4_tail"))),
]

NOTEBOOKS["09_fig5_attention.ipynb"] = [
    ("markdown", """
# 09 · Fig 5: where does an entity look in the image?

PROMU's Fig 5 reads the attention of an entity mention over the image in the fusion layers:
after entity-object alignment the mention attends to its own object (the trophy for "Oscar")
and the type follows. Here: the first word of the first mention of a few test posts, its
attention over the image patches in the last fusion layer (mean over heads, scaled to 0-1),
for the fusion model from scratch and from PROMU pre-training, with each model's predicted tag.
"""),
    ("parameters", PARAMS_COMMON + '\ndataset = "twitter2015"\nn_posts = 4'),
    ("code", setup("inspect")),
    ("markdown", "## Fine-tuned models (cached by stage 03) and their attention"),
    ("code", """
seed = cfg.run.seeds[0]
models = {"no pre-training": tables.scratch_job(dataset, seed), "PROMU": tables.promu_job(dataset, seed)}
experiments.run_jobs(cfg, list(models.values()))
cases = inspect.attention_study(cfg, models, n_posts)
fig = figs.attention_figure(cases)
saved = report.save_figure(fig, "fig5_attention", figures)
table = tables.attention_table(cfg, cases)
table.save(figures, provenance)
display(table)
"""),
    ("markdown", """
**What to see.** Bright patches are where the mention looks. In the toy world each mention has
its own drawn object (left to right in mention order), so the table measures how much of the
mention's patch attention lands inside that object's box, next to whether the type came out
right. A handful of posts is a case study, not a statistic.
"""),
    ("code", expect(figure_outputs("fig5_attention"), table_outputs("fig5_attention"))),
]

NOTEBOOKS["10_hvpnet.ipynb"] = [
    ("markdown", """
# 10 · HVPNeT analyses: variants, low resource, cross-task transfer, gates

The baseline's own paper (HVPNeT / HMNeT) studies its design: variants without the pyramid
(Single), with the last block everywhere (Flat), one block per three layers (1V3) and objects
only (OnlyObj) (its Table 1); F1 with a fraction of the training data (its Fig 3); transfer of
a model trained on one task to the other (its Table 3); and the dynamic gate that mixes the
pyramid blocks per layer (its Fig 4).
"""),
    ("parameters", PARAMS_COMMON + '''
datasets = None  # None: cfg.scope.hvpnet_datasets
fractions = None  # low-resource curve (HVPNeT Fig 3); None: cfg.scope.low_resource_fractions
low_resource_datasets = None  # None: cfg.scope.low_resource_datasets
n_gate_posts = 200  # test posts averaged for the gate heatmaps'''),
    ("code", setup("inspect", scope={"datasets": "hvpnet_datasets", "fractions": "low_resource_fractions", "low_resource_datasets": "low_resource_datasets"})),
    ("markdown", "## Variants (HVPNeT Table 1)"),
    ("code", """
rows = experiments.HVPNET_VARIANT_ROWS
results = experiments.run_jobs(cfg, tables.row_jobs(rows, datasets, cfg.run.seeds))
variants = tables.results_table(
    cfg, "hvpnet_variants", rows, results, datasets, paper=("hvpnet", "table1_prf"),
    title="HVPNeT variants: test P/R/F1", paper_source="HVPNeT Table 1 (HMNeT rows)",
)
variants.save(figures, provenance)
display(variants)
saved = report.save_figure(figs.table_bars(variants, title="HVPNeT variants: test F1"), "hvpnet_variants", figures)
"""),
    ("markdown", "## Low-resource curve (HVPNeT Fig 3)"),
    ("code", """
jobs = tables.low_resource_jobs(low_resource_datasets, cfg.run.seeds, fractions)
results = experiments.run_jobs(cfg, jobs)
low, curves = tables.low_resource_table(
    cfg, results, tables.LOW_RESOURCE_MODELS, low_resource_datasets, fractions
)
low.save(figures, provenance)
display(low)
saved = report.save_figure(figs.low_resource_figure(curves, fractions), "hvpnet_low_resource", figures)
"""),
    ("markdown", "## Cross-task transfer (HVPNeT Table 3)"),
    ("code", """
results = experiments.run_jobs(cfg, tables.cross_task_jobs(cfg.run.seeds))
cross = tables.cross_task_table(cfg, results)
cross.save(figures, provenance)
display(cross)
saved = report.save_figure(figs.table_bars(cross, list(cross.columns), "Cross-task transfer"), "hvpnet_cross_task", figures)
print(tables.compare_rows(cross, cross.rows[1].name, cross.rows[0].name).sentence())
"""),
    ("markdown", "## Dynamic gates (HVPNeT Fig 4)"),
    ("code", """
seed = cfg.run.seeds[0]
gate_jobs = {d: experiments.Finetune(d, "hvpnet", seed=seed) for d in datasets}
experiments.run_jobs(cfg, list(gate_jobs.values()))
gates = inspect.gates_by_dataset(cfg, gate_jobs, n_gate_posts)
saved = report.save_figure(figs.gates_figure(gates), "hvpnet_gates", figures)
"""),
    ("markdown", """
**How to read it.** The variants test whether the pyramid and the gate matter; the curve, how
much each model needs its training data; the transfer table, whether a backbone trained on the
other task is a better start than the plain one (the paper: slightly, for HMNeT). In the
heatmaps each row sums to one: a uniform row means the gate does not prefer any pyramid block.
"""),
    ("code", expect(
        table_outputs("hvpnet_variants"), figure_outputs("hvpnet_variants"),
        table_outputs("hvpnet_low_resource"), figure_outputs("hvpnet_low_resource"),
        table_outputs("hvpnet_cross_task"), figure_outputs("hvpnet_cross_task"),
        figure_outputs("hvpnet_gates"),
    )),
]


NOTEBOOKS["11_robustness.ipynb"] = [
    ("markdown", """
# 11 · Irrelevant-image robustness

HVPNeT argues that its gates make it less sensitive to images that do not match the text
("error sensitivity"); neither paper measures it. Here every multimodal model of Table 1,
trained with the true images, is evaluated on the test split three ways: with the post's own
image, with a blank image, and with another post's image (a fixed permutation). F1 is reported
on all posts and, in the toy world (whose generator knows which posts carry an irrelevant
image), separately on posts whose own image is relevant or irrelevant. Real data has no such
labels: those columns stay empty, with the reason. Nothing is retrained: the fine-tuned models
come from the cache of stage 03 (`promu_lib.experiments.run_jobs`).
"""),
    ("parameters", """
profile = "tiny"
config_file = None
force = False  # results are cached by config and weights hash; delete run.output_dir to recompute
seeds = None  # None: cfg.run.seeds; e.g. [0] to cut work
datasets = None  # None: the profile's scope (cfg.scope.datasets)
"""),
    ("code", """
from IPython.display import Markdown, display

from promu_lib import notebook, report, robustness

cfg = notebook.setup(profile, config_file)
if seeds is not None:
    cfg = cfg.replace(**{"run.seeds": list(seeds)})
datasets = list(datasets if datasets is not None else cfg.scope.datasets)
figures = notebook.figures_dir(cfg)
provenance = report.provenance(cfg)
"""),
    ("markdown", "## Evaluate each model with the true, a blank and another post's image"),
    ("code", """
rows = robustness.multimodal_rows()
results = robustness.robustness_results(cfg, rows, datasets)
table = robustness.robustness_table(cfg, rows, results, datasets)
table.save(figures, provenance)
display(table)
fig = robustness.robustness_figure(results, rows, datasets)
saved = report.save_figure(fig, "robustness", figures)
"""),
    ("markdown", '## What shows (computed from the numbers above)'),
    ("code", """
display(Markdown("\\n".join(f"- {s}" for s in robustness.summary(results, rows, datasets))))
"""),
    ("markdown", """
**How to read it.** A model that uses the image loses F1 when the image is blank, and more when
it is another post's image (a wrong cue is worse than none, unless the model learnt to ignore
images that do not fit the text, which is what HVPNeT's gates are meant to do). The relevance
columns split the posts by their own image: with the true image, irrelevant-image posts can
only be solved from the text. Differences smaller than the seeds' spread are no evidence either
way; toy-world numbers are not comparable to any paper's.
"""),
    ("code", """
notebook.expect_outputs([
    figures / "robustness.csv", figures / "robustness.md", figures / "robustness.config.json",
    figures / "robustness.png", figures / "robustness.pdf",
])
"""),
]

NOTEBOOKS["12_llm.ipynb"] = [
    ("markdown", """
# 12 · A chat model with vision (PROMU Fig 6)

PROMU compares against Visual ChatGPT prompted with two worked cases, and reports test F1 of
41.45 (Twitter-2015), 47.24 (Twitter-2017; the paper's text says "Twitter 2015" twice) and
36.82 (MNRE). This stage runs the same protocol against any OpenAI-compatible endpoint given in
the config (`llm.url`, `llm.model`, the API key from the environment variable named by
`llm.api_key_env`): two demonstrations from the train split, the image attached as a base64
data URL, answers parsed into BIO tags / relation labels and scored with the same metrics as
every other table. Answers are cached on disk, so a rerun sends nothing. By default no endpoint
is configured: no request is made and the measured column stays empty, with the reason.
"""),
    ("parameters", """
profile = "tiny"
config_file = None
force = False  # answers are cached by request hash; delete llm.cache_dir to ask again
datasets = ["twitter2015", "twitter2017", "mnre"]
max_posts = None  # None: llm.max_posts (0 = every test post)
"""),
    ("code", """
from IPython.display import Markdown, display

from promu_lib import llm, notebook, report

cfg = notebook.setup(profile, config_file)
figures = notebook.figures_dir(cfg)
provenance = report.provenance(cfg)
client = llm.ChatClient.from_config(cfg)
reason = llm.skip_reason(cfg)
print(f"[promu] endpoint: {cfg.llm.url} ({cfg.llm.model})" if client else f"[promu] {reason}")
"""),
    ("markdown", '## The prompt of the first test post (image data cut short)'),
    ("code", 'print(llm.show_messages(llm.example_prompt(cfg, datasets[0])))'),
    ("markdown", '## Ask, parse, score'),
    ("code", """
results = {d: llm.evaluate_dataset(cfg, d, client, max_posts) for d in datasets} if client else {}
table = llm.llm_table(cfg, results, datasets, reason)
table.save(figures, provenance)
display(table)
fig = llm.llm_figure(table)
saved = report.save_figure(fig, "llm", figures)
"""),
    ("code", 'display(Markdown(llm.summary(results, table, reason)))'),
    ("code", """
notebook.expect_outputs([
    figures / "llm.csv", figures / "llm.md", figures / "llm.config.json",
    figures / "llm.png", figures / "llm.pdf",
])
"""),
]

if __name__ == "__main__":
    for name, cells in NOTEBOOKS.items():
        path = notebook.write_notebook(NB / name, cells)
        problems = notebook.notebook_problems(path)
        assert not problems, (name, problems)
        print(path)

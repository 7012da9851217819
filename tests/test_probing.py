"""Model introspection for the figures, on tiny random models over a tiny toy world."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from worlds import world

from promu_lib import plots  # noqa: E402
from promu_lib.config import load_config  # noqa: E402
from promu_lib.data.records import ENTITY_TYPES, NER_TAGS  # noqa: E402
from promu_lib.data.toyworld import build_toy_world  # noqa: E402
from promu_lib.data.toyworld_oracle import entity_spans  # noqa: E402
from promu_lib.jobs import Finetune  # noqa: E402
from promu_lib.studies import common, fig3_tsne, fig5_attention, hvpnet, probing  # noqa: E402
from promu_lib.train.common import save_weights  # noqa: E402

pytestmark = pytest.mark.slow  # builds a toy world and a tokenizer once (~7 s on 2 busy cores)

WORLD = world(twitter2015=(10, 3, 6), mnre=(12, 3, 8))
# 32 px images in 8 px patches: a 4 x 4 grid; one-layer encoders
MODEL = {
    "text.hidden_size": 16, "text.num_layers": 1, "text.num_heads": 2,
    "text.intermediate_size": 32,
    "vision.hidden_size": 16, "vision.num_layers": 1, "vision.num_heads": 2,
    "vision.intermediate_size": 32, "vision.patch_size": 8,
    "fusion.num_layers": 1, "fusion.projection_dim": 8, "hvpnet.mid_dim": 8,
}  # fmt: skip


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("inspect")
    cfg = load_config(
        "tiny",
        overrides={
            "data.root": str(root / "data"), "run.output_dir": str(root / "runs"),
            "run.progress": False, **WORLD, **MODEL,
        },
    )  # fmt: skip
    build_toy_world(cfg, progress=False)
    return cfg


@pytest.fixture(scope="module")
def ner(cfg):
    torch.manual_seed(0)
    net, tok = probing.load_task_model(cfg, "twitter2015", "promu")
    return net, tok, probing.load_posts(cfg, "twitter2015", tok)


@pytest.fixture(scope="module")
def re_(cfg, ner):
    torch.manual_seed(0)
    net, tok = probing.load_task_model(cfg, "mnre", "promu", tokenizer=ner[1])
    return net, tok, probing.load_posts(cfg, "mnre", tok)


def test_load_finetuned_reads_the_job_weights(cfg, ner):
    net, tok, _ = ner
    job = Finetune("twitter2015", "promu", seed=3)
    save_weights(job.out_dir(cfg) / probing.MODEL_FILE, net)
    loaded, _ = probing.load_finetuned(cfg, job, tok)
    assert not loaded.training
    for (k, a), b in zip(net.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k
    with pytest.raises(Exception, match="no such weights file"):
        probing.load_finetuned(cfg, Finetune("twitter2015", "promu", seed=4), tok)


def test_entity_object_embeddings(cfg, ner):
    net, _, posts = ner
    truth = probing.read_truth_rows(cfg, "twitter2015", "test")
    emb = fig3_tsne.entity_object_embeddings(net, cfg, posts, n_posts=3, truth=truth)
    picked = [i for i, p in enumerate(posts.posts) if any(t != "O" for t in p.labels)][:3]
    n_ent = sum(len(entity_spans(posts.posts[i].labels)) for i in picked)
    n_obj = sum(
        o.get("mention") is not None for i in picked if truth[i]["relevant"] for o in truth[i]["objects"]
    )  # fmt: skip
    assert emb.kinds.count("entity") == n_ent and emb.kinds.count("object") == n_obj > 0
    assert emb.features.shape == (n_ent + n_obj, 16) and np.isfinite(emb.features).all()
    assert set(emb.labels) <= set(ENTITY_TYPES)
    # the first entity: the mean fused state of its words' first pieces
    batch = next(probing.batches(posts, picked[:1]))
    with torch.inference_mode():
        states = net.backbone(batch["input_ids"], batch["attention_mask"], batch["image"])
    s, e, typ = entity_spans(posts.posts[picked[0]].labels)[0]
    expect = states.text_states[0, batch["word_starts"][0, s:e]].mean(0)
    assert emb.labels[0] == typ
    np.testing.assert_allclose(emb.features[0], expect.double().numpy(), rtol=1e-5, atol=1e-6)
    no_truth = fig3_tsne.entity_object_embeddings(net, cfg, posts, n_posts=3)
    assert set(no_truth.kinds) == {"entity"} and len(no_truth) == n_ent


def test_relation_image_embeddings(re_):
    net, _, posts = re_
    emb = fig3_tsne.relation_image_embeddings(net, posts, n_posts=4)
    related = [p.relation for p in posts.posts if p.relation != "None"][:4]
    assert emb.kinds == ["relation", "image"] * len(related)
    assert emb.labels == [r for r in related for _ in (0, 1)]
    assert emb.features.shape == (2 * len(related), 16)
    everything = fig3_tsne.relation_image_embeddings(net, posts, n_posts=100, include_none=True)
    assert len(everything) == 2 * len(posts)


def test_fusion_only_analyses_refuse_other_backbones(cfg, ner):
    bert, _ = probing.load_task_model(cfg, "twitter2015", "bert", tokenizer=ner[1])
    with pytest.raises(TypeError, match="fusion encoder"):
        fig3_tsne.entity_object_embeddings(bert, cfg, ner[2])


def test_token_patch_attention_picks_the_row_and_the_patches():
    B, nh, L, K = 2, 3, 4, 4
    T = L + 1 + K
    att = torch.zeros(B, nh, T, T)
    att[0, :, 1, L + 1 :] = torch.tensor([0.1, 0.2, 0.3, 0.4])
    att[0, 0, 1, L] = 0.9  # the image CLS is not a patch
    att[1, 0, 2, L + 1 :] = torch.tensor([0.3, 0.0, 0.0, 0.0])  # head 0 only: mean over 3 heads
    out = fig5_attention.token_patch_attention(
        [torch.zeros_like(att), att], L, torch.tensor([1, 2])
    )
    assert torch.allclose(out[0], torch.tensor([0.1, 0.2, 0.3, 0.4]))
    assert torch.allclose(out[1], torch.tensor([0.1, 0.0, 0.0, 0.0]))
    first = fig5_attention.token_patch_attention(
        [torch.zeros_like(att), att], L, torch.tensor([1, 2]), 0
    )
    assert not first.any()


def test_attention_cases(cfg, ner):
    net, _, posts = ner
    truth = probing.read_truth_rows(cfg, "twitter2015", "test")
    idx = fig5_attention.attention_posts(posts, 2, truth)
    assert len(idx) == 2 and all(truth[i]["relevant"] for i in idx)
    cases = fig5_attention.attention_cases(net, cfg, posts, idx, truth=truth)
    for case, i in zip(cases, idx):
        s, e, typ = entity_spans(posts.posts[i].labels)[0]
        assert case.mention == " ".join(posts.posts[i].tokens[s:e]) and case.gold == typ
        assert case.grid == (4, 4) and case.attention.shape == (16,)
        assert case.pred in NER_TAGS and case.image.shape == (64, 64, 3)
        assert 0.0 <= case.object_share <= 1.0
        assert 0.0 < case.attention.sum() <= 1.0 + 1e-6
    fig = plots.attention_figure({"a": cases, "b": cases})
    assert len(fig.axes) == 2 * 3
    plt.close(fig)


def test_gate_weights(cfg, ner, re_):
    torch.manual_seed(0)
    hvp, _ = probing.load_task_model(cfg, "mnre", "hvpnet", tokenizer=ner[1])
    g = hvpnet.gate_weights(hvp, re_[2], n_posts=5)
    assert set(g) == {"global image", "objects"}
    for v in g.values():
        assert v.shape == (1, 4)  # one text layer, four pyramid blocks
        np.testing.assert_allclose(v.sum(-1), 1.0, rtol=1e-6)  # a softmax per layer
    only = probing.load_task_model(cfg, "mnre", "hvpnet-onlyobj", tokenizer=ner[1])[0]
    assert set(hvpnet.gate_weights(only, re_[2], n_posts=3)) == {"objects"}
    flat = probing.load_task_model(cfg, "mnre", "hvpnet-flat", tokenizer=ner[1])[0]
    with pytest.raises(ValueError, match="no dynamic gate"):
        hvpnet.gate_weights(flat, re_[2], n_posts=3)
    with pytest.raises(TypeError, match="HVPNeT"):
        hvpnet.gate_weights(re_[0], re_[2])
    fig = plots.gates_figure({"mnre": g})
    plt.close(fig)


def test_studies_from_finished_jobs(cfg, ner, re_):
    """The notebook entry points: weights where the jobs keep them -> embeddings, cases, gates."""
    jobs = {
        "scratch": (common.scratch_job("twitter2015", 0), common.scratch_job("mnre", 0)),
    }
    save_weights(jobs["scratch"][0].out_dir(cfg) / probing.MODEL_FILE, ner[0])
    save_weights(jobs["scratch"][1].out_dir(cfg) / probing.MODEL_FILE, re_[0])
    panels = fig3_tsne.tsne_panels(cfg, jobs, n_posts=3)
    assert set(panels["scratch"]) == {"entity-object", "relation-image"}
    cases = fig5_attention.attention_study(cfg, {"scratch": jobs["scratch"][0]}, n_posts=2)
    assert len(cases["scratch"]) == 2
    with pytest.raises(ValueError, match="one dataset"):
        fig5_attention.attention_study(cfg, {"a": jobs["scratch"][0], "b": jobs["scratch"][1]})
    hvp_job = Finetune("mnre", "hvpnet", seed=0)
    torch.manual_seed(0)
    hvp, _ = probing.load_task_model(cfg, "mnre", "hvpnet", tokenizer=ner[1])
    save_weights(hvp_job.out_dir(cfg) / probing.MODEL_FILE, hvp)
    gates = hvpnet.gates_by_dataset(cfg, {"mnre": hvp_job}, n_posts=4)
    np.testing.assert_allclose(
        gates["mnre"]["objects"], hvpnet.gate_weights(hvp, re_[2], 4)["objects"], rtol=1e-6
    )
    fig = plots.tsne_figure({f"{k}": e for k, e in panels["scratch"].items()})
    plt.close(fig)

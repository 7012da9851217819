import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from promu_lib import analysis, plots  # noqa: E402
from promu_lib.data.records import Box, NerPost, RePost, Span  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    """t-SNE's OpenMP threads only slow it down on a busy 2-core machine."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


@pytest.fixture
def ax():
    fig, ax = plt.subplots()
    yield ax
    plt.close(fig)


def test_tsne_shape_and_determinism():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 16))
    a = analysis.tsne_2d(x, seed=1, max_iter=300)
    assert a.shape == (30, 2) and np.isfinite(a).all()
    np.testing.assert_array_equal(analysis.tsne_2d(torch.tensor(x), seed=1, max_iter=300), a)
    assert analysis.tsne_2d(x[:5], seed=0, max_iter=250).shape == (5, 2)  # perplexity < N
    with pytest.raises(ValueError, match="N >= 3"):
        analysis.tsne_2d(x[:2])


def test_tsne_keeps_separated_clusters_apart():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (15, 8)), rng.normal(20, 1, (15, 8))])
    p = analysis.tsne_2d(x, seed=0)
    a, b = p[:15].mean(0), p[15:].mean(0)
    spread = max(p[:15].std(0).max(), p[15:].std(0).max())
    assert np.linalg.norm(a - b) > 3 * spread


def test_tail_relations_are_the_rarest_without_none():
    counts = {"None": 1, "/per/per/parent": 50, "/per/per/couple": 3, "a": 3, "b": 10, "c": 0}
    assert analysis.tail_relations(counts, k=3) == ["c", "/per/per/couple", "a"]
    assert "None" not in analysis.tail_relations(counts, k=10)
    assert len(analysis.tail_relations(counts, k=10)) == 5


def test_f1_gains_absolute_relative_and_missing():
    a = {"ORG": 40.0, "MISC": 0.0, "PER": 80.0}
    b = {"ORG": 50.0, "MISC": 10.0, "PER": 82.0}
    assert analysis.f1_gains(a, b, ["ORG", "PER"]) == {"ORG": 10.0, "PER": 2.0}
    rel = analysis.f1_gains(a, b, ["ORG", "MISC"], relative=True)
    assert rel["ORG"] == pytest.approx(25.0) and math.isnan(rel["MISC"])
    assert analysis.mean_gain(rel) == pytest.approx(25.0)
    with pytest.raises(KeyError, match="LOC"):
        analysis.f1_gains(a, b, ["LOC"])


def test_upsample_attention_scales_and_places_the_peak():
    att = np.zeros(16)
    att[3] = 5.0  # row 0, column 3 of a 4x4 grid: top-right patch
    heat = analysis.upsample_attention(att, (32, 32))
    assert heat.shape == (32, 32) and heat.min() >= 0.0 and heat.max() <= 1.0
    assert heat[:8, 24:].mean() > heat[24:, :8].mean()
    with pytest.raises(ValueError, match="square"):
        analysis.upsample_attention(np.ones(15), (8, 8))
    assert analysis.upsample_attention(np.ones(6), (6, 9), grid=(2, 3)).shape == (6, 9)


def test_entity_mentions_and_post_descriptions():
    post = NerPost(
        "1", ("Ana", "Lee", "visits", "Rome", "FC"), ("B-PER", "I-PER", "O", "B-LOC", "I-ORG")
    )
    assert analysis.entity_mentions(post) == [("Ana Lee", "PER"), ("Rome", "LOC"), ("FC", "ORG")]
    assert "Ana Lee [PER]" in analysis.describe_post(post)
    re = RePost(("Ana", "met", "Bo"), Span("Ana", 0, 1), Span("Bo", 2, 3), "x.jpg", "/per/per/peer")
    assert "/per/per/peer" in analysis.describe_post(re)


def test_plot_helpers_draw_on_agg(ax):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (32, 48, 3), dtype=np.uint8)
    pts = rng.normal(size=(6, 2))
    plots.plot_tsne(pts, ["PER", "LOC"] * 3, "t-SNE", ax, kinds=["text"] * 3 + ["image"] * 3)
    assert len(ax.collections) == 4 and ax.get_legend() is not None
    ax.clear()
    gains = analysis.f1_gains(
        {"/per/per/parent": 10, "b": 20}, {"/per/per/parent": 20, "b": 25}, ["/per/per/parent", "b"]
    )
    plots.plot_gains(gains, ax, "Fig 4", summary={"tail avg": 7.5, "all avg": 2.0})
    assert [t.get_text() for t in ax.get_xticklabels()] == [
        "per/parent",
        "b",
        "tail avg",
        "all avg",
    ]
    ax.clear()
    plots.attention_overlay(img, rng.random(16), ax, "token 'Oscar'")
    assert len(ax.images) == 2
    ax.clear()
    boxes = [Box(2, 2, 20, 20, 0.9, "person"), [25, 5, 40, 30, 1.0, "dog"]]
    plots.draw_boxes(img, boxes, None, ax, title="post", caption="a caption")
    assert len(ax.patches) == 2 and [t.get_text() for t in ax.texts] == ["person"]
    with pytest.raises(ValueError, match="labels"):
        plots.draw_boxes(img, boxes, ["one"], ax)
    ax.clear()
    plots.gate_heatmap(torch.rand(5, 4, 3), ax)
    assert ax.images[0].get_array().shape == (4, 3)
    ax.clear()
    plots.low_resource_curve([0.1, 0.5, 1.0], {"HVPNeT": [[50, 52], [60, 61], [70]]}, ax)
    assert len(ax.lines) == 1 and len(ax.collections) == 1
    ax.clear()
    plots.grouped_bars(
        {"relevant": {"bert": 60, "promu": 70}, "irrelevant": {"bert": 58, "promu": 62}}, ax
    )
    assert len(ax.patches) == 4


def _tiny_data(root):
    """Two NER posts per split and five MRE lines per split, in the real layout."""
    from PIL import Image

    from promu_lib.config import load_config
    from promu_lib.data.formats import write_boxes, write_mnre, write_rel2id, write_twitter
    from promu_lib.data.layout import DataLayout

    cfg = load_config("tiny", overrides={"data.root": str(root)})
    layout = DataLayout.of(cfg)
    relations = ["None", "None", "None", "/per/per/parent", "/per/loc/place_of_birth"]
    for split in ("train", "dev", "test"):
        for ds in ("twitter2015", "twitter2017"):
            posts = [NerPost(f"{ds}{split}{i}", ("Ana", "x"), ("B-PER", "O")) for i in range(2)]
            write_twitter(layout.split_file(ds, split), posts)
            for p in posts:
                layout.image_dir(ds, split).mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (16, 16), (200, 10, 10)).save(
                    layout.image_dir(ds, split) / f"{p.img_id}.jpg"
                )
            if split == "train":
                write_boxes(layout.boxes(ds), {posts[0].img_id: [Box(1, 1, 8, 8, 0.9, "person")]})
        re_posts = [
            RePost(("A", "and", "B"), Span("A", 0, 1), Span("B", 2, 3), f"{split}{i}.jpg", r)
            for i, r in enumerate(relations)
        ]
        write_mnre(layout.split_file("mnre", split), re_posts)
        layout.image_dir("mnre", split).mkdir(parents=True, exist_ok=True)
        for p in re_posts:
            Image.new("RGB", (16, 16)).save(layout.image_dir("mnre", split) / p.img_id)
    write_rel2id(layout.rel2id())
    return cfg, layout


def test_example_posts_figure_and_data_tables(tmp_path):
    from promu_lib.data.check import check_data
    from promu_lib.studies.data import data_tables

    cfg, layout = _tiny_data(tmp_path / "data")
    fig = plots.example_posts_figure(layout, n_examples=3, seed=0)
    axes = fig.axes
    assert len(axes) == 9
    assert [len(ax.patches) for ax in axes[:2]] in ([1, 0], [0, 1])  # one post has a box
    assert not axes[2].axison  # only two twitter2015 posts: the third panel is blank
    mnre_captions = [ax.get_xlabel() for ax in axes[6:]]
    assert sum("/per/" in c for c in mnre_captions) == 2  # distinct relations come first
    plt.close(fig)
    check = check_data(layout)
    assert check.ok, check.problems
    sizes, labels = data_tables(check, cfg)
    assert sizes.display_rows()[2] == ["mnre", "5", "12247", "5", "1624", "5", "1614"]
    rows = {r[0]: r[1:] for r in labels.display_rows()}
    assert rows["twitter2015 PER"] == ["2", "2", "2"] and rows["mnre None"] == ["3", "3", "3"]
    assert "toy-world numbers" in sizes.caption

import json

import pytest

from promu_lib.config import (
    PROFILES,
    ConfigError,
    config_hash,
    load_config,
    profile_config,
    save_config,
    validate,
)


@pytest.mark.parametrize("name", PROFILES)
def test_profiles_resolve_and_round_trip(tmp_path, name):
    cfg = profile_config(name)
    assert cfg.profile == name
    for suffix in (".yaml", ".json"):
        path = save_config(cfg, tmp_path / f"cfg{suffix}")
        again = load_config(name, file=path)
        assert again == cfg
        assert config_hash(again) == config_hash(cfg)


def test_paper_profile_keeps_the_papers_settings():
    cfg = profile_config("paper")
    assert cfg.data.max_len == 80
    assert cfg.finetune.lr == 1e-4 and cfg.finetune.weight_decay == 1e-3
    assert cfg.finetune.batch_size == 16
    assert cfg.pretrain.batch_size == 128 and cfg.pretrain.steps == 85000
    assert cfg.data.toy is None


def test_overrides_and_section_hashes():
    base = load_config("tiny")
    changed = load_config("tiny", overrides=["finetune.lr=0.5", "run.seeds=[1, 2]"])
    assert changed.finetune.lr == 0.5 and changed.run.seeds == (1, 2)
    assert load_config("tiny", overrides=["finetune.lr=2e-3"]).finetune.lr == 0.002
    # a fine-tuning change leaves the data hash alone but changes the fine-tuning hash
    assert config_hash(base, "data") == config_hash(changed, "data")
    assert config_hash(base, "finetune") != config_hash(changed, "finetune")
    assert config_hash(base) != config_hash(changed)


def test_hash_is_stable_across_processes():
    # the hash of a Config equals the hash of its plain (JSON) form: tuples and lists agree
    cfg = load_config("tiny")
    assert config_hash(cfg, "run") == config_hash(json.loads(json.dumps(cfg.to_dict())), "run")


@pytest.mark.parametrize(
    "override, message",
    [
        (["finetune.lrr=1"], "unknown config key(s) lrr in section 'finetune'"),
        (["nosuch.x=1"], "unknown config key(s) nosuch"),
        (["finetune.epochs=many"], "finetune.epochs: expected an integer"),
        (["pretrain.soft_labels=3"], "pretrain.soft_labels: expected true/false"),
        (["finetune.lr"], "expected KEY=VALUE"),
    ],
)
def test_bad_overrides_are_rejected_with_the_key(override, message):
    with pytest.raises(ConfigError, match=None) as err:
        load_config("tiny", overrides=override)
    assert message in str(err.value)


def test_bad_config_file_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("finetune:\n  epochs: [1, 2]\n")
    with pytest.raises(ConfigError) as err:
        load_config("tiny", file=path)
    assert str(path) in str(err.value) and "finetune.epochs" in str(err.value)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("tiny", file=tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="unknown profile"):
        load_config("huge")


@pytest.mark.parametrize("name", PROFILES)
def test_every_profile_passes_the_choices_and_ranges(name):
    assert validate(profile_config(name)) == profile_config(name)


def test_settings_at_their_neutral_value_leave_every_hash_unchanged():
    """A setting added with a default that does what the code did before it (config.HASH_NEUTRAL)
    must not invalidate cached runs: at that value the hash is the one without the setting."""
    from promu_lib.config import HASH_NEUTRAL, config_hash

    cfg = load_config("tiny")
    older = cfg.to_dict()
    for key in HASH_NEUTRAL:
        *path, last = key.split(".")
        node = older
        for part in path:
            node = node[part]
        del node[last]
    assert config_hash(older, "data") == config_hash(cfg, "data")
    assert config_hash(older) == config_hash(cfg)
    assert config_hash(cfg.replace(**{"data.objects": "crops"}), "data") != config_hash(cfg, "data")
    assert config_hash(cfg.replace(**{"detect.conf": 0.5})) != config_hash(cfg)
    assert config_hash(cfg.replace(**{"run.executor": "slurm"})) != config_hash(cfg)

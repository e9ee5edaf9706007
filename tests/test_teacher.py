"""The teacher on a tiny random Llama: pooling, LoRA targets, config, train/save/load/predict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from leader.data.store import VisitDataset
from leader.errors import LeaderError
from leader.teacher import LeaderTeacher, TeacherConfig, predict_teacher, train_teacher
from leader.teacher.features import read_features
from leader.teacher.model import last_token_index
from leader.teacher.prompts import PromptBuilder
from leader.teacher.testing import make_tiny_backbone
from leader.teacher.train import epoch_batches


@pytest.fixture()
def tiny_backbone(tmp_path: Path, tiny_dataset: VisitDataset) -> Path:
    texts = PromptBuilder(tiny_dataset.vocab).build_all(tiny_dataset.samples(None, "all"))
    return make_tiny_backbone(tmp_path / "tiny-llama", texts)


def _teacher(folder: Path, dataset: VisitDataset, **overrides: object) -> LeaderTeacher:
    config = TeacherConfig(model=str(folder), **overrides)  # type: ignore[arg-type]
    return LeaderTeacher.build(config, dataset.vocab)


def test_last_token_index_left_and_right() -> None:
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert last_token_index(mask).tolist() == [2, 4, 4]


def test_pooling_is_the_same_under_left_and_right_padding(
    tiny_backbone: Path, tiny_dataset: VisitDataset
) -> None:
    teacher = _teacher(tiny_backbone, tiny_dataset, precision="fp32").eval()
    ids, _ = teacher.encode(tiny_dataset.samples(None, "all"))
    assert len({len(i) for i in ids}) > 3  # lengths differ, so padding really happens
    assert all(i[-1] == teacher.tokenizer.eos_token_id for i in ids)  # EOS is the pooled token
    with torch.no_grad():
        right = teacher(**teacher.pad(ids, "right"))
        left = teacher(**teacher.pad(ids, "left"))
        alone = torch.cat([teacher(**teacher.pad([one])).hidden for one in ids])
    torch.testing.assert_close(right.hidden, alone, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(left.hidden, alone, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(left.logits, right.logits, atol=1e-5, rtol=1e-4)
    assert right.logits.shape == (len(ids), tiny_dataset.vocab.size("medication"))


def test_lora_uses_the_targets_that_exist(
    tiny_backbone: Path, tiny_dataset: VisitDataset, caplog: pytest.LogCaptureFixture
) -> None:
    teacher = _teacher(tiny_backbone, tiny_dataset, lora_targets=["q_proj", "c_attn"])
    assert "c_attn" in caplog.text
    names = [n for n, p in teacher.named_parameters() if p.requires_grad]
    assert any("q_proj.lora_A" in n for n in names) and "head.weight" in names
    assert not any("k_proj.lora" in n for n in names)
    # the backbone itself stays frozen
    assert all("lora_" in n or n == "head.weight" for n in names)
    with pytest.raises(LeaderError, match="lora_targets"):
        _teacher(tiny_backbone, tiny_dataset, lora_targets=["c_attn"])


def test_config_yaml_round_trip_and_unknown_keys(tmp_path: Path) -> None:
    config = TeacherConfig(max_steps=7, lora_targets=["q_proj"])
    config.to_yaml(tmp_path / "c.yaml")
    assert TeacherConfig.from_yaml(tmp_path / "c.yaml") == config
    assert TeacherConfig.from_yaml(tmp_path / "c.yaml", lr=1e-3).lr == 1e-3
    (tmp_path / "bad.yaml").write_text("max_step: 3\n")
    with pytest.raises(LeaderError, match="unknown key"):
        TeacherConfig.from_yaml(tmp_path / "bad.yaml")
    with pytest.raises(LeaderError, match="precision"):
        TeacherConfig(precision="int4")


def test_length_bucketing_is_deterministic_and_reduces_padding() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(20, 400, size=512).tolist()
    plain = epoch_batches(lengths, 8, seed=1, epoch=0, bucket=False)
    bucketed = epoch_batches(lengths, 8, seed=1, epoch=0, bucket=True)
    assert bucketed == epoch_batches(lengths, 8, seed=1, epoch=0, bucket=True)
    assert bucketed != epoch_batches(lengths, 8, seed=1, epoch=1, bucket=True)
    assert sorted(i for b in bucketed for i in b) == list(range(512))

    def padded(batches: list[list[int]]) -> int:
        return sum(len(b) * max(lengths[i] for i in b) for b in batches)

    assert padded(bucketed) < 0.7 * padded(plain)


def test_train_save_load_predict(
    tmp_path: Path, tiny_backbone: Path, tiny_dataset: VisitDataset
) -> None:
    assert tiny_dataset.path is not None
    config = TeacherConfig(
        model=str(tiny_backbone), max_steps=8, batch_size=2, eval_every=4, lr=5e-3, log_every=2
    )
    run = train_teacher(tiny_dataset.path, tmp_path / "run", config)
    for name in (
        "config.yaml",
        "train.log",
        "metrics.json",
        "head.safetensors",
        "teacher.json",
        "medications.json",
        "vocab.json",
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "tokenizer/tokenizer.json",
    ):
        assert (run / name).exists(), name
    assert not (run / "checkpoint").exists()
    assert TeacherConfig.from_yaml(run / "config.yaml") == config
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 8 and [h["step"] for h in metrics["history"]] == [4, 8]
    assert "validation PRAUC" in (run / "train.log").read_text()

    # The saved model holds exactly the best checkpoint's trained tensors...
    teacher = LeaderTeacher.from_pretrained(run)
    best = load_file(run / "best" / "trainable.safetensors")
    state = teacher.trainable_state()
    assert set(state) == set(best)
    for name, tensor in best.items():
        torch.testing.assert_close(state[name], tensor, atol=0, rtol=0)
    # ... and training changed them (LoRA B starts at zero).
    assert any(float(t.abs().sum()) > 0 for n, t in best.items() if "lora_B" in n)

    out = tmp_path / "features" / "teacher.safetensors"
    test_metrics = predict_teacher(run, tiny_dataset.path, out)
    tensors, meta = read_features(out)
    samples = [s for split in ("train", "val", "test") for s in tiny_dataset.samples(split, "all")]
    assert meta["sample_ids"] == [s.sample_id for s in samples]
    assert meta["splits"] == ["train"] * 6 + ["val"] + ["test"] * 2
    assert meta["medication_codes"] == ["m1", "m2", "m3", "m4", "m5"]
    assert meta["hidden_size"] == 32 and meta["sample_mode"] == "all"
    assert meta["model"] == str(tiny_backbone)
    assert tensors["hidden"].shape == (9, 32) and tensors["hidden"].dtype == np.float32
    assert tensors["probabilities"].shape == (9, 5)
    # from_pretrained twice, and the features file: identical probabilities
    again = LeaderTeacher.from_pretrained(run).predict_proba(samples)
    np.testing.assert_array_equal(again, teacher.predict_proba(samples))
    np.testing.assert_array_equal(again, tensors["probabilities"])
    # LEADER(T) rows: the test split (p2: one single-visit and one multi-visit sample)
    saved = json.loads(out.with_name("teacher.metrics.json").read_text())
    assert saved == json.loads(json.dumps(test_metrics))
    assert test_metrics["all"]["samples"] == 2
    assert test_metrics["single_visit"]["samples"] == 1
    assert set(test_metrics["all"]["metrics"]) >= {"prauc", "jaccard", "f1", "ddi_rate"}


def test_an_unfinished_run_needs_resume(tmp_path: Path, tiny_dataset: VisitDataset) -> None:
    assert tiny_dataset.path is not None
    (tmp_path / "run" / "checkpoint").mkdir(parents=True)
    with pytest.raises(LeaderError, match="--resume"):
        train_teacher(tiny_dataset.path, tmp_path / "run", TeacherConfig())


def test_max_layers_keeps_the_first_blocks(tiny_backbone: Path, tiny_dataset: VisitDataset) -> None:
    full = _teacher(tiny_backbone, tiny_dataset, precision="fp32").eval()
    short = _teacher(tiny_backbone, tiny_dataset, precision="fp32", max_layers=1).eval()
    body = short.backbone.get_base_model()
    assert len(body.layers) == 1 and body.config.num_hidden_layers == 1
    ids, _ = short.encode(tiny_dataset.samples("test"))
    with torch.no_grad():
        one, two = short(**short.pad(ids)).hidden, full(**full.pad(ids)).hidden
    assert one.shape == two.shape and not torch.allclose(one, two)


def test_teacher_side_controls_change_weights_or_words(
    tiny_backbone: Path, tiny_dataset: VisitDataset
) -> None:
    """No pretraining: the same architecture, other (seeded, reproducible) weights. No words:
    the same prompts with codes instead of names."""
    pretrained = _teacher(tiny_backbone, tiny_dataset, precision="fp32", lora_r=0).eval()
    random_a, random_b, other_seed = (
        _teacher(tiny_backbone, tiny_dataset, precision="fp32", lora_r=0,
                 backbone_init="random", seed=seed).eval()
        for seed in (1, 1, 2)
    )  # fmt: skip
    weights = [
        dict(m.backbone.named_parameters()) for m in (pretrained, random_a, random_b, other_seed)
    ]
    name = next(n for n in weights[0] if n.endswith("q_proj.weight"))
    assert not torch.equal(weights[0][name], weights[1][name])
    assert torch.equal(weights[1][name], weights[2][name])
    assert not torch.equal(weights[1][name], weights[3][name])
    assert (
        random_a.backbone.config.num_hidden_layers == pretrained.backbone.config.num_hidden_layers
    )

    sample = next(s for s in tiny_dataset.samples("test") if s.current.diagnoses)
    words = pretrained.prompt_builder().build(sample).text
    codes = _teacher(tiny_backbone, tiny_dataset, code_names=False).prompt_builder()
    bare = codes.build(sample).text
    code = sample.current.diagnoses[0]
    assert tiny_dataset.vocab.name("diagnosis", code) in words
    assert code in bare and tiny_dataset.vocab.name("diagnosis", code) not in bare
    with pytest.raises(LeaderError, match="backbone_init"):
        TeacherConfig(backbone_init="scratch").validate()


def test_shipped_teacher_configs_parse() -> None:
    configs = sorted((Path(__file__).parents[1] / "configs").glob("teacher-*.yaml"))
    assert configs
    for path in configs:
        TeacherConfig.from_yaml(path)


def test_cached_lower_layers_give_the_full_forward(
    tmp_path: Path, tiny_backbone: Path, tiny_dataset: VisitDataset
) -> None:
    teacher = _teacher(tiny_backbone, tiny_dataset, precision="fp32", lora_layers=1).eval()
    assert teacher.frozen_layers == 1 and teacher.layers_total == 2
    lora = [n for n, p in teacher.named_parameters() if "lora_" in n and p.requires_grad]
    assert lora and all(".layers.1." in n for n in lora)  # the frozen layer 0 has none
    with torch.no_grad():  # LoRA B starts at zero: make the adapters matter
        for name, param in teacher.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    ids, _ = teacher.encode(tiny_dataset.samples(None, "all"))
    states = teacher.lower_states(ids, batch_size=3)
    assert [tuple(s.shape) for s in states] == [(len(i), 32) for i in ids]
    with torch.no_grad():
        full = teacher(**teacher.pad(ids))
        cached = teacher(**teacher.pad_states(states))
    torch.testing.assert_close(cached.hidden, full.hidden, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(cached.logits, full.logits, atol=1e-5, rtol=1e-4)
    assert len(teacher.body.layers) == 2  # the split is undone after each call
    probabilities, _ = teacher.predict_states(states, batch_size=4)
    np.testing.assert_allclose(probabilities, teacher.predict_ids(ids)[0], atol=1e-5)

    assert tiny_dataset.path is not None
    config = TeacherConfig(
        model=str(tiny_backbone), max_steps=6, batch_size=2, eval_every=3, lr=5e-3,
        lora_layers=1, head_lr=5e-2, precision="fp32", pooling="mean", head_init="prior",
    )  # fmt: skip
    cached_file = tmp_path / "cached.safetensors"
    untrained = tmp_path / "untrained.safetensors"
    run = train_teacher(
        tiny_dataset.path,
        tmp_path / "run",
        config,
        features_out=cached_file,
        untrained_out=untrained,
    )
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["lora_layers"] == 1 and metrics["steps"] == 6
    # the features written from the cache are those `teacher predict` writes
    predict_teacher(run, tiny_dataset.path, tmp_path / "full.safetensors")
    (got, got_meta), (want, want_meta) = (
        read_features(f) for f in (cached_file, tmp_path / "full.safetensors")
    )
    assert got_meta["sample_ids"] == want_meta["sample_ids"]
    np.testing.assert_allclose(got["probabilities"], want["probabilities"], atol=1e-5)
    np.testing.assert_allclose(got["hidden"], want["hidden"], atol=1e-4, rtol=1e-4)
    # the control before fine-tuning: the backbone's own states, as predict_untrained gives
    from leader.controls import noise_features, prior_features
    from leader.teacher.predict import predict_untrained

    predict_untrained(config, tiny_dataset.path, tmp_path / "fresh.safetensors")
    (early, meta), (fresh, _) = (
        read_features(f) for f in (untrained, tmp_path / "fresh.safetensors")
    )
    assert meta["fine_tuned"] == "false"
    np.testing.assert_allclose(early["hidden"], fresh["hidden"], atol=1e-4, rtol=1e-4)
    assert not np.allclose(early["hidden"], got["hidden"], atol=1e-3)  # training moved them
    # noise control: the teacher's width and per-dimension scale, prior soft labels
    noise, noise_meta = read_features(
        noise_features(cached_file, tiny_dataset.path, tmp_path / "noise.safetensors")
    )
    assert noise["hidden"].shape == got["hidden"].shape
    assert not np.allclose(noise["hidden"], got["hidden"], atol=1e-2)
    assert noise_meta["sample_ids"] == got_meta["sample_ids"] and "control" in noise_meta
    prior, _ = read_features(
        prior_features(cached_file, tiny_dataset.path, tmp_path / "prior.safetensors")
    )
    np.testing.assert_array_equal(noise["probabilities"], prior["probabilities"])
    assert prior["hidden"].shape == got["hidden"].shape
    assert metrics["train_cpu_seconds"] > 0 and len(metrics["history_cpu_seconds"]) == 2
    log = (run / "train.log").read_text()
    assert "cached the 1 frozen layers' output" in log and "log-odds" in log
    head = load_file(run / "head.safetensors")
    assert set(head) == {"weight", "bias", "mean", "scale"} and float(head["scale"].min()) > 0
    with pytest.raises(LeaderError, match="lora_layers"):
        TeacherConfig(max_layers=2, lora_layers=3)


def test_fp16_is_loss_scaled_outside_deepspeed() -> None:
    from leader.teacher.train import mixed_precision

    assert mixed_precision(torch.float16, deepspeed=False) == "fp16"  # GradScaler on
    assert mixed_precision(torch.float16, deepspeed=True) == "no"  # DeepSpeed scales itself
    assert mixed_precision(torch.bfloat16, deepspeed=False) == "no"
    assert mixed_precision(None, deepspeed=False) == "no"
    with pytest.raises(LeaderError, match="fp16 needs a GPU"):
        from leader.teacher.model import resolve_precision

        resolve_precision("fp16", torch.device("cpu"))


def test_a_prompt_never_exceeds_the_model_positions(
    tiny_backbone: Path, tiny_dataset: VisitDataset
) -> None:
    teacher = _teacher(tiny_backbone, tiny_dataset, max_tokens=100_000)
    teacher.max_positions = 12
    assert teacher.prompt_budget() == 11
    ids, stats = teacher.encode(tiny_dataset.samples(None, "all"))
    assert max(len(i) for i in ids) <= 12 and stats.current_cut > 0
    assert all(i[-1] == teacher.tokenizer.eos_token_id for i in ids)


def test_label_attention_on_a_frozen_backbone_trains_saves_and_reloads(
    tmp_path: Path, tiny_backbone: Path, tiny_dataset: VisitDataset
) -> None:
    """``lora_r: 0`` caches the whole backbone's output once and trains the output layer
    alone; ``pooling: labels`` reads every token per drug and hands its logits to
    distillation; the control before fine-tuning is the backbone's pooled state."""
    from leader.teacher.model import LabelAttentionHead
    from leader.teacher.predict import predict_untrained

    assert tiny_dataset.path is not None
    config = TeacherConfig(
        model=str(tiny_backbone), max_steps=6, batch_size=2, eval_every=3, lr=5e-2,
        lora_r=0, pooling="labels", label_width=8, head_init="prior", precision="fp32",
    )  # fmt: skip
    teacher = LeaderTeacher.build(config, tiny_dataset.vocab).eval()
    assert teacher.frozen_layers == teacher.layers_total == 2
    assert isinstance(teacher.head, LabelAttentionHead)
    assert all(n.startswith("head.") for n, p in teacher.named_parameters() if p.requires_grad)
    # the cached path is the full forward (the cache includes the final norm, applied once)
    with torch.no_grad():
        for param in teacher.head.parameters():
            param.normal_(0, 0.3)
    ids, _ = teacher.encode(tiny_dataset.samples(None, "all"))
    with torch.no_grad():
        full = teacher(**teacher.pad(ids))
        cached = teacher(**teacher.pad_states(teacher.lower_states(ids, batch_size=4)))
    torch.testing.assert_close(cached.logits, full.logits, atol=1e-5, rtol=1e-4)
    assert full.hidden.shape == (len(ids), 5) and full.pooled.shape == (len(ids), 32)
    torch.testing.assert_close(full.hidden, full.logits)
    # a padded token never changes a drug's attention
    one = teacher.pad(ids[:1])
    wide = teacher.pad([ids[0], ids[0] + ids[0]])
    with torch.no_grad():
        torch.testing.assert_close(
            teacher(**one).logits[0], teacher(**wide).logits[0], atol=1e-5, rtol=1e-4
        )

    features, untrained = tmp_path / "features.safetensors", tmp_path / "untrained.safetensors"
    run = train_teacher(tiny_dataset.path, tmp_path / "run", config, features_out=features,
                        untrained_out=untrained)  # fmt: skip
    assert not (run / "adapter").exists()
    assert "cached the 2 frozen layers' output" in (run / "train.log").read_text()
    reloaded = LeaderTeacher.from_pretrained(run)
    got, meta = read_features(features)
    samples = [s for split in ("train", "val", "test") for s in tiny_dataset.samples(split, "all")]
    np.testing.assert_allclose(reloaded.predict_proba(samples), got["probabilities"], atol=1e-5)
    assert meta["hidden_size"] == 5 and got["hidden"].shape == (9, 5)
    np.testing.assert_allclose(1 / (1 + np.exp(-got["hidden"])), got["probabilities"], atol=1e-5)
    # the control: the frozen backbone's mean-pooled states (what it knows before labels)
    predict_untrained(config, tiny_dataset.path, tmp_path / "fresh.safetensors")
    (early, early_meta), (fresh, _) = (
        read_features(f) for f in (untrained, tmp_path / "fresh.safetensors")
    )
    assert early_meta["fine_tuned"] == "false" and early["hidden"].shape == (9, 32)
    np.testing.assert_allclose(early["hidden"], fresh["hidden"], atol=1e-4, rtol=1e-4)
    # a head saved for another pooling is refused with the file named
    head = load_file(run / "head.safetensors")
    assert {"queries", "weight", "bias", "key.weight"} <= set(head)
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(5, 32), "mean": head["mean"], "scale": head["scale"]},
              run / "head.safetensors")  # fmt: skip
    with pytest.raises(LeaderError, match="head.safetensors does not match"):
        LeaderTeacher.from_pretrained(run)
    with pytest.raises(LeaderError, match="pooling"):
        TeacherConfig(pooling="attention")


def test_frozen_states_are_kept_between_runs(
    tmp_path: Path, tiny_backbone: Path, tiny_dataset: VisitDataset
) -> None:
    """``cache_dir``: a second run reads the frozen states the first computed, per prompt,
    and trains to the same weights."""
    assert tiny_dataset.path is not None
    settings = dict(model=str(tiny_backbone), max_steps=4, batch_size=2, eval_every=2,
                    lora_layers=1, precision="fp32",
                    cache_dir=str(tmp_path / "states"))  # fmt: skip
    first = train_teacher(tiny_dataset.path, tmp_path / "a", TeacherConfig(**settings))  # type: ignore[arg-type]
    assert "0 read from" in (first / "train.log").read_text()
    second = train_teacher(tiny_dataset.path, tmp_path / "b", TeacherConfig(**settings))  # type: ignore[arg-type]
    log = (second / "train.log").read_text()
    assert "6 read from" in log and "1 read from" in log  # train, then validation prompts
    assert "computed" in log and " 1 computed" not in log and " 6 computed" not in log
    a, b = (load_file(run / "head.safetensors") for run in (first, second))
    for name in a:
        torch.testing.assert_close(a[name], b[name])
    # another layer split is another setting: nothing is reused across it
    other = TeacherConfig(**(settings | {"lora_r": 0}))  # type: ignore[arg-type]
    third = train_teacher(tiny_dataset.path, tmp_path / "c", other)
    assert "0 read from" in (third / "train.log").read_text()
    assert len(list((tmp_path / "states").glob("states-*.safetensors"))) == 2

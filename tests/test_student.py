"""The student: token offsets, the recent-visits rule, batches and masks, losses, files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from leader.config import replace
from leader.data.store import Sample, Visit, VisitDataset
from leader.errors import LeaderError
from leader.models import load_deployed
from leader.student import LeaderStudent, StudentConfig, train_student
from leader.student.data import (
    EMPTY,
    PAD,
    ProfileVocab,
    TokenSpace,
    encode_samples,
    kept_visits,
    make_batch,
)
from leader.student.losses import bce_loss, distillation_loss, info_nce, soft_label_loss


def _visit(i: int, meds: tuple[str, ...] = ("m1",)) -> Visit:
    return Visit(f"v{i}", f"2100-01-{i:02d}", ("d1", "d2"), ("x1",), meds)


def _long_sample(n: int) -> Sample:
    """n visits; visit i prescribes drug m{(i % 5) + 1}; the current one prescribes m5 only."""
    visits = [_visit(i, (f"m{(i % 4) + 1}",)) for i in range(n - 1)]
    current = Visit("now", None, ("d3",), (), ("m5",))
    return Sample("p:now", "p", tuple(visits), current, {"gender": "F"})


def _model(tiny: VisitDataset, **overrides: object) -> LeaderStudent:
    torch.manual_seed(0)
    config = StudentConfig(**{"dropout": 0.0, "attn_dropout": 0.0, **overrides})  # type: ignore[arg-type]
    profile = ProfileVocab.build(tiny.samples("train"), ["gender", "age_band", "insurance"])
    return LeaderStudent(config, tiny.vocab, profile, teacher_width=0)


# ---------------------------------------------------------------- token space / offsets
def test_token_offsets_follow_specials_then_kinds(tiny_dataset: VisitDataset) -> None:
    space = TokenSpace(tiny_dataset.vocab)  # 5 diagnoses, 3 procedures, 5 drugs
    assert space.offsets == {"diagnosis": 2, "procedure": 7, "medication": 10}
    assert space.size == 15
    assert space.encode("diagnosis", ["d1", "d5"]) == [2, 6]
    assert space.encode("procedure", ["x1", "zzz", "x3"]) == [7, 9]  # unknown skipped
    assert space.encode("medication", ["m1", "m5"]) == [10, 14]
    for token in range(2, space.size):
        kind, code = space.decode(token)
        assert space.encode(kind, [code]) == [token]
    assert space.decode(PAD) == ("special", "[PAD]")


def test_alignment_targets_are_the_current_drugs_at_the_drug_offset(
    tiny_dataset: VisitDataset,
) -> None:
    samples = tiny_dataset.samples("train")
    model = _model(tiny_dataset)
    batch = make_batch(model.encode(samples), np.arange(len(samples)))
    assert batch.target_index is not None and batch.targets is not None
    for row, sample in enumerate(samples):
        target = batch.tokens["medication"][batch.target_index[row]]
        tokens = [int(t) for t in target if t != PAD]
        decoded = [model.space.decode(t) for t in tokens]
        assert decoded == [("medication", c) for c in sample.current.medications]
        hot = [model.vocab.codes["medication"][i] for i in np.flatnonzero(batch.targets[row])]
        assert sorted(hot) == sorted(sample.current.medications)


# ---------------------------------------------------------------- recent-visits rule
def test_keeps_most_recent_visits_and_always_the_current_one() -> None:
    sample = _long_sample(12)
    kept, before = kept_visits(sample, max_visits=10)
    assert len(kept) == 10
    assert kept[-1] is sample.current
    assert [v.visit_id for v in kept[:-1]] == [f"v{i}" for i in range(2, 11)]
    assert before is not None and before.visit_id == "v1"
    kept, before = kept_visits(sample, max_visits=20)
    assert len(kept) == 12 and before is None


def test_visit_streams_pair_codes_with_previous_medications(tiny_dataset: VisitDataset) -> None:
    space = TokenSpace(tiny_dataset.vocab)
    profile = ProfileVocab.build([], ["gender"])
    sample = _long_sample(12)
    encoded = encode_samples([sample], space, profile, max_visits=10)
    assert encoded.n_visits.tolist() == [10]
    assert not encoded.profile_slot[0]  # the window starts after the first visit
    rows = [encoded.visit_set("medication", r) for r in range(10)]
    # slot of kept visit v2 holds v1's drug (m2); the current visit's slot holds v10's (m3)
    assert rows[0] == space.encode("medication", ["m2"])
    assert rows[-1] == space.encode("medication", ["m3"])
    # the current visit's own drugs (m5) never enter the inputs
    m5 = space.encode("medication", ["m5"])[0]
    assert all(m5 not in encoded.visit_set("medication", r) for r in range(10))
    # empty procedure set of the current visit -> one EMPTY token
    assert encoded.visit_set("procedure", 9) == [EMPTY]

    first = encode_samples([_long_sample(3)], space, profile, max_visits=10)
    assert first.profile_slot[0]  # whole history kept: first visit's slot is the profile
    assert first.visit_set("medication", 0) == [EMPTY]


def test_codes_per_set_are_capped(tiny_dataset: VisitDataset) -> None:
    space = TokenSpace(tiny_dataset.vocab)
    current = Visit("v", None, ("d1", "d2", "d3", "d4", "d5"), ("x1",), ("m1",))
    encoded = encode_samples(
        [Sample("p:v", "p", (), current, {})], space, ProfileVocab([], {}), max_codes=3
    )
    assert encoded.sets["diagnosis"].flat.tolist() == [2, 3, 4]


# ---------------------------------------------------------------- batches, shapes, masks
def test_batch_shapes_and_masks(tiny_dataset: VisitDataset) -> None:
    model = _model(tiny_dataset)
    samples = tiny_dataset.samples("train")  # p1 has 3 visits -> samples with 1, 2, 3 visits
    encoded = model.encode(samples)
    batch = make_batch(encoded, np.arange(len(samples)))
    counts = [len(s.history) + 1 for s in samples]
    assert batch.visit_mask.shape == (len(samples), max(counts))
    assert batch.visit_mask.sum(1).tolist() == counts
    assert batch.visit_index.shape == (sum(counts),)
    for kind in ("diagnosis", "procedure", "medication"):
        assert batch.set_index[kind].shape == (sum(counts),)
        # each distinct set once, every one with a real token
        assert len(set(map(tuple, batch.tokens[kind].tolist()))) == batch.tokens[kind].shape[0]
        assert (batch.tokens[kind] != PAD).any(1).all()
        rows = np.concatenate([encoded.row_start[i] + np.arange(c) for i, c in enumerate(counts)])
        for visit, row in enumerate(rows):
            held = [int(t) for t in batch.tokens[kind][batch.set_index[kind][visit]] if t != PAD]
            assert held == encoded.visit_set(kind, int(row))
    assert batch.profile.shape == (len(samples), 3)
    output = model(batch)
    assert output.logits.shape == (len(samples), 5)
    assert output.loss is not None and output.loss.ndim == 0


def test_padding_does_not_change_predictions(tiny_dataset: VisitDataset) -> None:
    model = _model(tiny_dataset).eval()
    samples = tiny_dataset.samples("train")
    together = model.predict_proba(samples)
    alone = np.vstack([model.predict_proba([s]) for s in samples])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_recency_changes_with_visit_order(tiny_dataset: VisitDataset) -> None:
    model = _model(tiny_dataset).eval()
    sample = tiny_dataset.samples("train")[2]  # p1's third visit, two earlier visits
    swapped = Sample(
        sample.sample_id, sample.patient_id, sample.history[::-1], sample.current, sample.profile
    )
    assert not np.allclose(model.predict_proba([sample]), model.predict_proba([swapped]))


# ---------------------------------------------------------------- losses by hand
def test_bce_matches_the_formula() -> None:
    logits = torch.tensor([[0.0, 2.0]])
    targets = torch.tensor([[1.0, 0.0]])
    expected = (math.log(2) + math.log(1 + math.exp(2))) / 2
    assert float(bce_loss(logits, targets)) == pytest.approx(expected)


def test_distillation_is_mse_and_leaves_the_teacher_alone() -> None:
    projected = torch.tensor([[1.0, 2.0], [0.0, 0.0]], requires_grad=True)
    teacher = torch.tensor([[0.0, 0.0], [1.0, 1.0]], requires_grad=True)
    loss = distillation_loss(projected, teacher)
    assert float(loss.detach()) == pytest.approx((1 + 4 + 1 + 1) / 4)
    loss.backward()
    assert teacher.grad is None and projected.grad is not None
    with pytest.raises(ValueError):
        distillation_loss(projected, torch.zeros(2, 3))


def test_soft_labels_are_bce_to_the_teacher_probabilities() -> None:
    logits = torch.tensor([[0.0, 2.0]], requires_grad=True)
    teacher = torch.tensor([[0.25, 1.0]], requires_grad=True)
    # BCE with a soft target p: -(p log s + (1 - p) log(1 - s)), s = sigmoid(logit)
    expected = (math.log(2) + math.log(1 + math.exp(-2))) / 2
    loss = soft_label_loss(logits, teacher)
    assert float(loss.detach()) == pytest.approx(expected)
    loss.backward()
    assert teacher.grad is None and logits.grad is not None
    with pytest.raises(ValueError):
        soft_label_loss(logits, torch.zeros(1, 3))


def test_info_nce_by_hand() -> None:
    eye = torch.eye(2)
    # logits [[1, 0], [0, 1]]: each direction -log(e / (e + 1)) = log(1 + e^-1)
    assert float(info_nce(eye, eye, 1.0)) == pytest.approx(math.log(1 + math.exp(-1)))
    # temperature 0.5 sharpens: log(1 + e^-2)
    assert float(info_nce(eye, eye * 3, 0.5)) == pytest.approx(math.log(1 + math.exp(-2)))
    # swapped pairs are worse than matched ones
    assert float(info_nce(eye, eye.flip(0), 1.0)) > float(info_nce(eye, eye, 1.0))
    # symmetric: each direction counted once
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    b = torch.tensor([[1.0, 0.2], [0.3, 1.0], [0.0, 1.0]])
    assert float(info_nce(a, b)) == pytest.approx(float(info_nce(b, a)))


def test_loss_parts_follow_the_switches(tiny_dataset: VisitDataset) -> None:
    samples = tiny_dataset.samples("train")
    profile = ProfileVocab.build(samples, ["gender"])
    config = StudentConfig(alpha=0.5, beta=0.1)
    model = LeaderStudent(config, tiny_dataset.vocab, profile, teacher_width=6)
    encoded = model.encode(samples)
    encoded.teacher = np.ones((len(samples), 6), dtype=np.float32)
    batch = make_batch(encoded, np.arange(len(samples)))
    out = model(batch)
    assert set(out.parts) == {"bce", "distill", "align"}
    expected = out.parts["bce"] + 0.5 * out.parts["distill"] + 0.1 * out.parts["align"]
    assert float(out.loss) == pytest.approx(expected, rel=1e-5)  # type: ignore[arg-type]
    model.config.kd = 0.3
    encoded.teacher_probabilities = np.full((len(samples), 5), 0.5, dtype=np.float32)
    out = model(make_batch(encoded, np.arange(len(samples))))
    assert set(out.parts) == {"bce", "distill", "align", "soft"}
    parts = out.parts
    expected = parts["bce"] + 0.5 * parts["distill"] + 0.1 * parts["align"] + 0.3 * parts["soft"]
    assert float(out.loss) == pytest.approx(expected, rel=1e-5)  # type: ignore[arg-type]
    model.config.alpha = model.config.kd = 0.0
    model.config.align = False
    assert set(model(batch).parts) == {"bce"}


# ---------------------------------------------------------------- training and files
def _features(path: Path, sample_ids: list[str], width: int = 8) -> Path:
    rng = np.random.default_rng(0)
    save_file(
        {
            "hidden": rng.standard_normal((len(sample_ids), width)).astype(np.float32),
            "probabilities": rng.random((len(sample_ids), 5)).astype(np.float32),
        },
        str(path),
        metadata={
            "sample_ids": json.dumps(sample_ids),
            "splits": json.dumps(["train"] * len(sample_ids)),
            "medication_codes": json.dumps(["m1", "m2", "m3", "m4", "m5"]),
            "hidden_size": str(width),
            "model": "random",
            "sample_mode": "all",
        },
    )
    return path


def test_train_save_load_equality_with_distillation(
    tiny_dataset: VisitDataset, tmp_path: Path
) -> None:
    assert tiny_dataset.path is not None
    ids = [s.sample_id for s in tiny_dataset.samples()]
    features = _features(tmp_path / "features.safetensors", ids)
    config = replace(StudentConfig(choose_distillation=False), epochs=3, batch_size=4, patience=5)
    run = train_student(tiny_dataset.path, tmp_path / "run", config, features)
    for name in (
        "config.json",
        "model.safetensors",
        "vocab.json",
        "decision.json",
        "run.json",
        "README.md",
        "config.yaml",
        "metrics.json",
        "train.log",
        "splits.json",
    ):
        assert (run / name).exists(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["distillation"] and len(metrics["history"]) == 3
    assert metrics["parameters_with_projector"] > metrics["parameters"]
    model = LeaderStudent.from_pretrained(run)
    assert not model.training and model.teacher_width == 8
    deployed = load_deployed(run)  # the decision is kept beside the model, not on it
    assert deployed.ddi_pairs == [("m1", "m4"), ("m2", "m5")] and deployed.ddi_source == "test"
    assert deployed.threshold == metrics["threshold"]
    assert model.vocab.name("medication", "m2") == "insulins"
    test = tiny_dataset.samples("test")
    first = model.predict_proba(test)
    again = LeaderStudent.from_pretrained(run).predict_proba(test)
    assert first.shape == (len(test), 5)
    np.testing.assert_array_equal(first, again)


def test_soft_labels_alone_need_no_projector_and_the_same_drugs(
    tiny_dataset: VisitDataset, tmp_path: Path
) -> None:
    assert tiny_dataset.path is not None
    ids = [s.sample_id for s in tiny_dataset.samples()]
    features = _features(tmp_path / "features.safetensors", ids)
    config = replace(
        StudentConfig(alpha=0.0, kd=1.0, choose_distillation=False), epochs=2, batch_size=4
    )
    run = train_student(tiny_dataset.path, tmp_path / "run", config, features)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["distillation"] and metrics["teacher_features"] == str(features)
    assert LeaderStudent.from_pretrained(run).projector is None
    assert "soft" in (run / "train.log").read_text()
    # drug columns in another order: refused, not silently misaligned
    with safe_open(str(features), framework="np") as handle:
        meta = dict(handle.metadata())
    tensors = load_file(str(features))
    meta["medication_codes"] = json.dumps(["m2", "m1", "m3", "m4", "m5"])
    save_file(tensors, str(tmp_path / "swapped.safetensors"), metadata=meta)
    with pytest.raises(LeaderError, match="medication_codes"):
        train_student(
            tiny_dataset.path, tmp_path / "run2", config, tmp_path / "swapped.safetensors"
        )


def test_distillation_weights_are_chosen_on_validation(
    tiny_dataset: VisitDataset, tmp_path: Path
) -> None:
    """Every alpha:kd candidate trains; the best validation PRAUC is the run; a finished
    plain student stands for 0:0; a second call retrains nothing."""
    assert tiny_dataset.path is not None
    ids = [s.sample_id for s in tiny_dataset.samples()]
    features = _features(tmp_path / "features.safetensors", ids)
    config = replace(StudentConfig(distill_grid=["0.4:0", "0:1", "0.4:0"]), epochs=2, batch_size=4)
    assert config.candidates() == [(0.0, 0.0), (0.4, 0.0), (0.0, 1.0)]
    plain = train_student(
        tiny_dataset.path, tmp_path / "plain", replace(config, alpha=0.0, kd=0.0)
    )
    run = train_student(tiny_dataset.path, tmp_path / "run", config, features, plain_run=plain)
    search = json.loads((run / "search.json").read_text())
    scores = [c["best_val_prauc"] for c in search["candidates"]]
    best = search["candidates"][scores.index(max(scores))]
    assert search["chosen"] == {"alpha": best["alpha"], "kd": best["kd"]}
    assert search["candidates"][0]["run"] == str(plain)
    assert not (run / "search" / "alpha0-kd0").exists()  # the plain student was reused
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["distillation_search"] == search
    assert metrics["best_val_prauc"] == best["best_val_prauc"]
    chosen = LeaderStudent.from_pretrained(run)
    assert (chosen.config.alpha, chosen.config.kd) == (best["alpha"], best["kd"])
    assert not chosen.config.choose_distillation  # config.yaml reruns the chosen weights
    for candidate in search["candidates"][1:]:
        tried = json.loads((Path(candidate["run"]) / "metrics.json").read_text())
        assert tried["distillation"] and tried["teacher_features"] == str(features)
    stamp = (run / "search" / "alpha0.4-kd0" / "metrics.json").stat().st_mtime_ns
    train_student(tiny_dataset.path, tmp_path / "run", config, features, plain_run=plain)
    assert (run / "search" / "alpha0.4-kd0" / "metrics.json").stat().st_mtime_ns == stamp
    with pytest.raises(LeaderError, match="alpha:kd"):
        StudentConfig(distill_grid=["0.4"]).validate()


def test_missing_teacher_features_are_named(tiny_dataset: VisitDataset, tmp_path: Path) -> None:
    assert tiny_dataset.path is not None
    ids = [s.sample_id for s in tiny_dataset.samples()][1:]
    features = _features(tmp_path / "f.safetensors", ids)
    config = replace(StudentConfig(choose_distillation=False), epochs=1, batch_size=4)
    with pytest.raises(LeaderError, match="p1:v1"):
        train_student(tiny_dataset.path, tmp_path / "run", config, features)


def test_without_features_there_is_no_distillation(
    tiny_dataset: VisitDataset, tmp_path: Path
) -> None:
    assert tiny_dataset.path is not None
    run = train_student(
        tiny_dataset.path, tmp_path / "run", replace(StudentConfig(), epochs=1, batch_size=4)
    )
    model = LeaderStudent.from_pretrained(run)
    assert model.projector is None and model.config.alpha == 0.0


def test_unknown_config_key_is_an_error() -> None:
    with pytest.raises(LeaderError, match="hiden"):
        StudentConfig.from_dict({"hiden": 3})


def _padded_reference(layer: torch.nn.Module, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The set layer written plainly on the padded layout (eval mode): the function to keep."""
    import torch.nn.functional as F

    n, length, dim = x.shape
    heads = layer.heads  # type: ignore[attr-defined]
    q, k, v = (
        layer.qkv(layer.norm1(x))  # type: ignore[operator]
        .view(n, length, 3, heads, dim // heads)
        .permute(2, 0, 3, 1, 4)
    )
    attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
    x = x + layer.out(attended.transpose(1, 2).reshape(n, length, dim))  # type: ignore[operator]
    x = x + layer.ff(layer.norm2(x))  # type: ignore[operator]
    weights = mask[..., None].float()
    return (x * weights).sum(1) / weights.sum(1)


def test_bucketed_set_layer_equals_the_padded_layer() -> None:
    from leader.student.model import MIN_BUCKET_SETS, SetEncoderLayer

    torch.manual_seed(0)
    layer = SetEncoderLayer(16, 4, 24, 0.4, 0.1).eval()
    # Lengths 1..40 across more sets than one bucket holds, rows in no particular order.
    lengths = torch.tensor([1, 40, 3, 7, 2, 9, 17, 33, 5, 1] * MIN_BUCKET_SETS)
    mask = torch.arange(40)[None, :] < lengths[:, None]
    x = torch.randn(len(lengths), 40, 16)
    with torch.no_grad():
        got, expected = layer(x, mask), _padded_reference(layer, x, mask)
    assert torch.allclose(got, expected, atol=1e-5)
    # Padding content never matters.
    x2 = torch.where(mask[..., None], x, torch.randn_like(x))
    with torch.no_grad():
        assert torch.allclose(layer(x2, mask), got, atol=1e-6)
    # The gradients are the padded layer's too.
    weight = torch.randn(len(lengths), 16)
    grads = []
    for forward in (layer, lambda x_, m_: _padded_reference(layer, x_, m_)):
        layer.zero_grad()
        x_grad = x.clone().requires_grad_(True)
        (forward(x_grad, mask) * weight).sum().backward()
        grads.append([x_grad.grad, *(p.grad for p in layer.parameters())])
    for got_grad, expected_grad in zip(*grads, strict=True):
        assert torch.allclose(got_grad, expected_grad, atol=1e-4)


def test_fast_dropout_rate_and_scale() -> None:
    from leader.student.model import fast_dropout

    torch.manual_seed(0)
    x = torch.ones(400_000)
    for p in (0.1, 0.4):
        y = fast_dropout(x, p, training=True)
        assert float((y == 0).float().mean()) == pytest.approx(p, abs=0.005)
        assert float(y.mean()) == pytest.approx(1.0, abs=0.01)  # inverted: expectation kept
    assert fast_dropout(x, 0.4, training=False) is x
    assert float(fast_dropout(x, 1.0, training=True).abs().sum()) == 0.0


def test_float_dropout_mask_is_the_bool_comparison() -> None:
    from leader.student.model import dropout_mask

    for p in (0.1, 0.4):
        torch.manual_seed(1)
        mask = dropout_mask(torch.Size([1001, 3]), p, torch.float32)
        torch.manual_seed(1)  # the same draw, compared the plain way
        words = torch.randint(-(2**63), 2**63 - 1, ((3003 + 3) // 4,), dtype=torch.int64)
        cut = round(p * 65536)
        keep = words.view(torch.int16)[:3003].view(1001, 3) >= cut - 32768
        assert torch.equal(mask, keep.float() * (65536 / (65536 - cut)))


def test_distinct_sets_encoded_once_equal_the_per_visit_encoding(
    tiny_dataset: VisitDataset,
) -> None:
    from leader.student.data import STREAMS, Ragged

    model = _model(tiny_dataset).eval()
    samples = tiny_dataset.samples("train")  # p1's visits recur in its later samples
    encoded = model.encode(samples)
    batch = make_batch(encoded, np.arange(len(samples)))
    counts = encoded.n_visits
    rows = np.concatenate([encoded.row_start[i] + np.arange(c) for i, c in enumerate(counts)])
    assert batch.tokens["diagnosis"].shape[0] < len(rows)  # some visits were shared
    with torch.no_grad():
        sets = model.encode_sets(batch)
        for i, kind in enumerate(STREAMS):
            per_visit = Ragged.from_rows([encoded.visit_set(kind, int(r)) for r in rows])
            plain = model.encode_set(i, torch.from_numpy(per_visit.pad(np.arange(len(rows)))))
            gathered = sets[i].index_select(0, batch.set_index[kind])
            assert torch.allclose(gathered, plain, atol=1e-6)
        targets = Ragged.from_rows(
            [model.space.encode("medication", s.current.medications) for s in samples]
        )
        plain = model.encode_set(2, torch.from_numpy(targets.pad(np.arange(len(samples)))))
        assert batch.target_index is not None
        assert torch.allclose(sets[2].index_select(0, batch.target_index), plain, atol=1e-6)


def test_patient_order_keeps_patients_together_and_shuffles_them() -> None:
    from leader.student.train import patient_order

    patient = np.array([0, 0, 0, 1, 2, 2, 3, 4, 4, 4, 5])
    orders = [patient_order(patient, np.random.default_rng(seed)) for seed in range(5)]
    for order in orders:
        assert sorted(order.tolist()) == list(range(len(patient)))  # every sample once
        runs = patient[order]
        changes = int((runs[1:] != runs[:-1]).sum())
        assert changes == len(set(patient.tolist())) - 1  # each patient in one run
        for p in set(patient.tolist()):  # a patient's samples keep their order
            mine = order[runs == p]
            assert (np.diff(mine) > 0).all()
    assert len({tuple(o) for o in orders}) > 1

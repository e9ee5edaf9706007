"""The baseline zoo: every registered model through fit/save/load/predict, plus targeted
checks of the floors, ECC chains, first-time patients, the molecule inputs, the shared
losses and the DDI control of the models that have one. Each neural baseline's defining
behaviour is pinned in its own ``tests/test_baseline_<model>.py``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import make_tiny_dataset
from leader.baselines import MODELS, create, load
from leader.baselines.features import collate, encode_sample
from leader.data.store import Sample, Visit, VisitDataset, Vocabulary
from leader.errors import LeaderError

# Real ATC3 classes (present in the shared atc3_smiles.csv) for the tiny dataset's drugs.
ATC3 = {"m1": "C07A", "m2": "A10A", "m3": "B01A", "m4": "C03C", "m5": "N02B"}
SMILES = {
    "C07A": ["CC(C)NCC(O)COC1=CC=C(CC(N)=O)C=C1", "CC(C)NCC(O)COc1ccc(CCOC)cc1"],
    "A10A": ["CC(C)(C)NCC(O)c1ccccc1"],  # stand-in molecule: any parsable SMILES will do
    "B01A": ["CC(=O)CC(C1=CC=CC=C1)C1=C(O)C2=C(OC1=O)C=CC=C2"],
    "C03C": ["NS(=O)(=O)c1cc(C(=O)O)c(NCc2ccco2)cc1Cl"],
    "N02B": ["CC(=O)NC1=CC=C(O)C=C1", "CC(=O)OC1=CC=CC=C1C(O)=O"],
}
TINY = {
    "epochs": 2,
    "embedding_dim": 8,
    "chains": 2,
    "threads": 1,
    "heads": 2,
    "encoder_ffn": 16,
    "gin_layers": 2,
}


def atc3_dataset() -> VisitDataset:
    """The tiny dataset with real ATC3 drug codes, for the molecule models."""
    ds = make_tiny_dataset()
    ds.visits["medications"] = ds.visits["medications"].map(lambda codes: [ATC3[c] for c in codes])
    ds.vocab.codes["medication"] = [ATC3[c] for c in ds.vocab.codes["medication"]]
    ds.vocab.names["medication"] = {}
    ds.ddi_pairs = [(ATC3[a], ATC3[b]) for a, b in ds.ddi_pairs]
    return ds


@pytest.fixture(scope="module")
def mol_dataset(tmp_path_factory: pytest.TempPathFactory) -> VisitDataset:
    return VisitDataset.load(atc3_dataset().save(tmp_path_factory.mktemp("mol") / "ds"))


def write_smiles(path: Path) -> Path:
    """The SMILES of ``SMILES`` as an atc3,smiles CSV."""
    rows = [f"{code},{s}" for code, items in SMILES.items() for s in items]
    path.write_text("atc3,smiles\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def smiles_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_smiles(tmp_path_factory.mktemp("smiles") / "atc3_smiles.csv")


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_fits_saves_loads_predicts(
    name: str, mol_dataset: VisitDataset, smiles_file: Path, tmp_path: Path
) -> None:
    torch.set_num_threads(1)
    model = create(name, smiles=str(smiles_file), **TINY)
    assert model.fit(mol_dataset, log=lambda _: None) is model
    samples = mol_dataset.samples(None)  # every patient: first-time and returning
    assert any(s.is_single_visit for s in samples) and not all(s.is_single_visit for s in samples)
    probabilities = model.predict_proba(samples)
    assert probabilities.shape == (len(samples), 5)
    assert np.isfinite(probabilities).all()
    assert (probabilities >= 0).all() and (probabilities <= 1).all()
    model.save_pretrained(tmp_path / name)
    saved = sorted(p.name for p in (tmp_path / name).iterdir())
    assert "config.json" in saved and "vocab.json" in saved
    assert all(not p.endswith((".pkl", ".pickle", ".pt", ".joblib")) for p in saved)
    reloaded = load(tmp_path / name)
    np.testing.assert_allclose(reloaded.predict_proba(samples), probabilities, atol=1e-6)
    assert reloaded.num_parameters() == model.num_parameters()


# The authors' epoch counts (each config's help cites them); the student's cap is 100.
AUTHORS_EPOCHS = {
    "retain": 40, "leap": 30, "gamenet": 40, "safedrug": 50, "micron": 40, "cognet": 200,
    "molerec": 50,
}  # fmt: skip


def test_epoch_caps_do_not_undercut_the_authors_or_the_student() -> None:
    from leader.config import TrainConfig

    for name, authors in AUTHORS_EPOCHS.items():
        config = create(name).config
        assert config.epochs >= max(authors, TrainConfig().epochs), name
        assert config.threads == TrainConfig().threads == 1, name  # the student's thread rule


def test_an_epoch_holds_the_authors_steps_under_last_visit_samples(
    tiny_dataset: VisitDataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With one sample per patient a visit-level model passes visits / samples times per
    epoch (rounded), a patient-level one once; ``epoch_passes`` sets it by hand."""
    last = VisitDataset.load(tiny_dataset.save(tmp_path / "last"))
    last.manifest = {**last.manifest, "options": {**last.manifest.get("options", {}),
                                                  "samples": "last"}}  # fmt: skip
    train_last, train_all = last.samples("train"), last.samples("train", "all")
    assert (len(train_last), len(train_all)) == (4, 6)  # p1 (3 visits), p3, p4, p6
    gamenet = create("gamenet", **TINY)
    assert gamenet.authors_passes(last, train_last) == 2  # 6 visits / 4 samples, rounded
    assert gamenet.authors_passes(tiny_dataset, tiny_dataset.samples("train")) == 1
    assert create("micron", **TINY).authors_passes(last, train_last) == 1  # per patient
    import leader.baselines.neural as neural

    steps: list[int] = []
    real_fit = neural.fit

    def counting_fit(network, batches, *args, **kwargs):  # type: ignore[no-untyped-def]
        steps.append(sum(1 for _ in batches(np.random.default_rng(0))))
        return real_fit(network, batches, *args, **kwargs)

    monkeypatch.setattr(neural, "fit", counting_fit)
    model = create("leap", epochs=1, epoch_passes=3, embedding_dim=8)
    model.fit(tiny_dataset, log=lambda _: None)
    assert steps == [3 * len(tiny_dataset.samples("train"))]  # batch_size 1
    assert model.epoch_passes_ == 3 and model.fit_result_.epochs_run == 1


def test_ecc_saved_chains_reproduce_scikit_learn(tiny_dataset: VisitDataset) -> None:
    from leader.baselines.features import current_visit_features
    from leader.baselines.linear import ECC, ECCConfig

    model = ECC(ECCConfig(chains=4, seed=3)).fit(tiny_dataset)
    orders = {tuple(chain.order_) for chain in model.chains_}
    assert len(orders) > 1, "chains must use different random orders"
    for chain in model.chains_:
        # The j-th classifier of a chain sees the features plus the j earlier drugs.
        widths = [est.coef_.shape[1] for est in chain.estimators_]
        assert widths == [8 + j for j in range(5)]  # 5 diagnoses + 3 procedures
    assert model.num_parameters() == sum(
        est.coef_.size + 1 for chain in model.chains_ for est in chain.estimators_
    )
    samples = tiny_dataset.samples(None)
    X = current_visit_features(tiny_dataset.vocab, samples)
    expected = np.mean([chain.predict_proba(X) for chain in model.chains_], axis=0)
    np.testing.assert_allclose(model.predict_proba(samples), expected, atol=1e-10)


def test_lr_is_logistic_regression_per_drug(tiny_dataset: VisitDataset) -> None:
    from sklearn.linear_model import LogisticRegression

    from leader.baselines.features import current_visit_features
    from leader.baselines.linear import LR

    model = LR().fit(tiny_dataset)
    train = tiny_dataset.samples("train")
    X, Y = current_visit_features(tiny_dataset.vocab, train), tiny_dataset.targets(train)
    for drug in range(5):
        if len(np.unique(Y[:, drug])) < 2:
            assert model.coef_[drug].sum() == 0  # constant model for a one-class drug
            continue
        reference = LogisticRegression(solver="liblinear").fit(X, Y[:, drug])
        np.testing.assert_allclose(
            model.predict_proba(train)[:, drug], reference.predict_proba(X)[:, 1], atol=1e-6
        )


def test_previous_visit_floor_repeats_last_visit_and_serves_first_timers(
    tiny_dataset: VisitDataset,
) -> None:
    model = create("previous_visit").fit(tiny_dataset)
    popularity = create("popularity").fit(tiny_dataset)
    samples = {s.sample_id: s for s in tiny_dataset.samples(None)}
    codes = tiny_dataset.vocab.codes["medication"]
    # p1's third visit: the second visit had m2, m3.
    third = model.predict_proba([samples["p1:v3"]])[0]
    assert {codes[i] for i in np.flatnonzero(third >= 0.5)} == {"m2", "m3"}
    # First-time patient: the popularity floor (k = round(mean drugs per train visit)).
    first = model.predict_proba([samples["p3:v6"]])[0]
    np.testing.assert_array_equal(first, popularity.predict_proba([samples["p3:v6"]])[0])
    # Train visits: 2,2,1,2,1,2 drugs -> k = 2; the two most frequent: m1 (4x), m2 (3x).
    assert popularity.k_ == 2
    assert {codes[i] for i in np.flatnonzero(first >= 0.5)} == {"m1", "m2"}


def test_first_time_patients_are_served_from_their_current_visit(
    mol_dataset: VisitDataset, smiles_file: Path
) -> None:
    """History-using models still read a first-time patient's diagnoses (RETAIN in its paper
    form: the reproductions' code form reads earlier visits only)."""
    first = next(s for s in mol_dataset.samples(None) if s.is_single_visit)
    other = Sample("x:1", "x", (), Visit("1", None, ("d4", "d3"), ("x3",), ()), dict(first.profile))
    for name in ("retain", "gamenet", "micron", "cognet", "safedrug"):
        options = {"form": "paper"} if name == "retain" else {}
        model = create(name, smiles=str(smiles_file), **TINY, **options)
        model.fit(mol_dataset, log=lambda _: None)
        a, b = model.predict_proba([first, other])
        assert not np.allclose(a, b), f"{name} ignores a first-time patient's current visit"


def test_visits_keep_the_most_recent_and_hide_the_target(tiny_dataset: VisitDataset) -> None:
    sample = {s.sample_id: s for s in tiny_dataset.samples(None)}["p1:v3"]
    encoded = encode_sample(sample, tiny_dataset.vocab, max_visits=2)
    assert len(encoded.diagnoses) == 2  # v2 (most recent earlier visit) + current
    assert encoded.medications[-1] == ()  # the current visit's drugs are the target only
    assert encoded.medications[0] == (2, 3)  # v2: m2, m3 (+1 for padding)
    batch = collate([encoded], 5, with_targets=True)
    assert batch.previous_medications()[0].tolist() == [0, 1, 1, 0, 0]
    assert batch.target is not None and batch.target[0].tolist() == [1, 0, 0, 0, 0]


def test_retain_reverses_only_real_visits() -> None:
    from leader.baselines.retain import reverse_padded

    x = torch.tensor([[[1.0], [2.0], [3.0]], [[4.0], [5.0], [0.0]]])
    out = reverse_padded(x, torch.tensor([3, 2]))
    assert out.squeeze(-1).tolist() == [[3.0, 2.0, 1.0], [5.0, 4.0, 0.0]]


def test_missing_molecules_are_named(smiles_file: Path, tmp_path: Path) -> None:
    ds = atc3_dataset()
    ds.visits["medications"] = ds.visits["medications"].map(
        lambda codes: ["Z99Z" if c == "N02B" else c for c in codes]
    )
    ds.vocab.codes["medication"] = [
        "Z99Z" if c == "N02B" else c for c in ds.vocab.codes["medication"]
    ]
    ds.ddi_pairs = []
    dataset = VisitDataset.load(ds.save(tmp_path / "ds"))
    for name in ("safedrug", "molerec"):
        with pytest.raises(LeaderError, match=r"no parsable SMILES for 1 of 5 drugs: Z99Z"):
            create(name, smiles=str(smiles_file), **TINY).fit(dataset, log=lambda _: None)
        model = create(name, smiles=str(smiles_file), allow_missing_molecules=True, **TINY)
        model.fit(dataset, log=lambda _: None)
        assert model.meta_["drugs_without_molecule"] == ["Z99Z"]
    with pytest.raises(LeaderError, match="--smiles"):
        create("safedrug", **TINY).fit(dataset, log=lambda _: None)


def test_unknown_model_and_option_are_errors(tmp_path: Path, tiny_dataset: VisitDataset) -> None:
    with pytest.raises(LeaderError, match="unknown model 'nope'"):
        create("nope")
    create("lr").fit(tiny_dataset).save_pretrained(tmp_path / "lr")
    config = (tmp_path / "lr" / "config.json").read_text().replace('"C"', '"bogus"')
    (tmp_path / "lr" / "config.json").write_text(config)
    with pytest.raises(LeaderError, match="unknown key.*bogus"):
        load(tmp_path / "lr")


PATIENTS = 40


def ddi_heavy_dataset() -> VisitDataset:
    """Every visit is prescribed the interacting pair C07A + A10A (and one more drug)."""
    rows = []
    for p in range(PATIENTS):
        for v in range(2):
            extra = ["B01A", "C03C", "N02B"][(p + v) % 3]
            rows.append(
                (
                    f"p{p}",
                    f"p{p}v{v}",
                    f"2{p:03d}-0{v + 1}-01",
                    [f"d{p % 3}"],
                    ["x1"],
                    ["C07A", "A10A", extra],
                )
            )
    visits = pd.DataFrame(
        rows, columns=["patient_id", "visit_id", "time", "diagnoses", "procedures", "medications"]
    )
    visits["time"] = pd.to_datetime(visits["time"])
    patients = [f"p{p}" for p in range(PATIENTS)]
    return VisitDataset(
        visits=visits,
        profiles=pd.DataFrame({"patient_id": patients}),
        vocab=Vocabulary(
            codes={
                "diagnosis": ["d0", "d1", "d2"],
                "procedure": ["x1"],
                "medication": ["C07A", "A10A", "B01A", "C03C", "N02B"],
            }
        ),
        splits={"train": patients[:-2], "val": patients[-2:], "test": []},
        ddi_pairs=[("C07A", "A10A")],
        ddi_source="test",
        stats={},
        manifest={"source": "test", "options": {"samples": "all"}},
    )


# name -> (options that never trigger the DDI loss, options that always do)
DDI_SWITCH = {
    "gamenet": ({"use_ddi": False}, {"target_ddi": 0.0, "temperature": 100.0, "decay": 1.0}),
    "safedrug": ({"target_ddi": 1.0}, {"target_ddi": 0.0}),
    "molerec": ({"target_ddi": 1.0}, {"target_ddi": 0.01}),
    "micron": ({"ddi_threshold": 1.0}, {"ddi_threshold": -1.0}),
}


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if n == "molerec" else n for n in DDI_SWITCH],
)
def test_ddi_loss_lowers_the_ddi_rate(name: str, smiles_file: Path, tmp_path: Path) -> None:
    """The same model trained with and without its DDI loss, on visits that always hold an
    interacting pair: the loss lowers the pair's joint probability (the expected DDI rate)."""
    torch.set_num_threads(1)
    dataset = VisitDataset.load(ddi_heavy_dataset().save(tmp_path / "ds"))
    samples = dataset.samples("train")
    if name == "micron":  # its DDI loss acts on h(r_t), which first visits are scored with
        samples = [s for s in samples if s.is_single_visit]
    joint = []
    for options in DDI_SWITCH[name]:
        # One epoch of per-visit steps: no best-epoch selection between the two runs.
        settings = {**TINY, "epochs": 1, "lr": 1e-2, "dropout": 0.0, "update": "visit"}
        model = create(name, smiles=str(smiles_file), **settings, **options)
        model.fit(dataset, log=lambda _: None)
        probabilities = model.predict_proba(samples)
        joint.append(float((probabilities[:, 0] * probabilities[:, 1]).mean()))
    without, with_loss = joint
    assert without > 0.5, f"{name} should learn the always-prescribed pair without the DDI loss"
    assert with_loss < without - 0.1

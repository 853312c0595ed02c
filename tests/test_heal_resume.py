"""A healed base rebuilt on a fresh GPU machine (GPU training is not bitwise reproducible) resumes its study when it
is the same recipe and its general loss is within storage.HEAL_TOLERANCE; anything else is still refused."""

import copy
import shutil

import optuna
import pytest

from cpt_harness import storage
from cpt_harness.config import load_config
from tests.conftest import ROOT

STUDY = "gpu-legal-ablation"


@pytest.fixture
def committed(tmp_path):
    """A copy of reports/legal-claims/study.db (an 80-trial GPU ablation whose base was healed on an H200)."""
    db = tmp_path / "study.db"
    shutil.copy(ROOT / "reports" / "legal-claims" / "study.db", db)
    cfg = load_config(ROOT / "sweeps" / "gpu-ablation.yaml", [f"study.storage=sqlite:///{db}", f"study.name={STUDY}"])
    study = optuna.load_study(study_name=STUDY, storage=cfg.study.storage)
    return cfg, study


def rebuilt(prov: dict, shift: float) -> dict:
    """The provenance a heal of the same recipe writes on another machine: same settings, post-heal losses moved."""
    new = copy.deepcopy(prov)
    new["healed_from"] = "/tmp/cptcache/models/" + prov["healed_from"].rsplit("/", 1)[1]
    new["heal_held_out"]["general_loss"][1] += shift
    new["heal_validation"]["general_loss"][1] -= shift / 2
    return new


def test_a_rebuilt_heal_within_tolerance_resumes_and_is_recorded(committed):
    cfg, study = committed
    stored = dict(study.user_attrs["fingerprints"])
    fingerprints = {**stored, "model": "0123456789abcdef"}
    prov = rebuilt(study.user_attrs["model_provenance"], 4e-5)
    with pytest.raises(storage.StudyMismatch, match="different model"):  # without the provenance: as before
        storage.open_study(cfg, fingerprints)
    resumed = storage.open_study(cfg, fingerprints, provenance=prov)
    [record] = resumed.user_attrs["rebuilt_heals"]
    assert record["model"] == "0123456789abcdef" and record["from_trial"] == 80
    assert record["general_loss_delta"] == pytest.approx(4e-5, abs=1e-9)
    storage.open_study(cfg, fingerprints, provenance=prov)  # a second worker: recorded once
    assert len(optuna.load_study(study_name=STUDY, storage=cfg.study.storage).user_attrs["rebuilt_heals"]) == 1
    assert resumed.user_attrs["fingerprints"] == stored, "the study keeps the fingerprint it was created with"


def test_a_rebuilt_heal_too_far_off_is_refused_with_the_fix(committed):
    cfg, study = committed
    fingerprints = {**study.user_attrs["fingerprints"], "model": "0123456789abcdef"}
    prov = rebuilt(study.user_attrs["model_provenance"], 3 * storage.HEAL_TOLERANCE)
    with pytest.raises(storage.StudyMismatch, match=r"differs from the study's by 0\.0060 nats.*healed-\*"):
        storage.open_study(cfg, fingerprints, provenance=prov)
    assert "rebuilt_heals" not in study.user_attrs


@pytest.mark.parametrize("change", ["heal settings", "base weights", "held-out documents", "not healed"])
def test_another_recipe_is_not_a_rebuild(committed, change):
    cfg, study = committed
    fingerprints = {**study.user_attrs["fingerprints"], "model": "0123456789abcdef"}
    prov = rebuilt(study.user_attrs["model_provenance"], 1e-5)
    if change == "heal settings":
        prov["heal"]["steps"] = 301
    elif change == "base weights":
        prov["sha256"] = "0" * 64
    elif change == "held-out documents":
        prov["heal_held_out"]["general_loss"][0] += 0.01
    else:
        prov = {k: v for k, v in prov.items() if not k.startswith("heal")}
    with pytest.raises(storage.StudyMismatch, match="different model"):
        storage.open_study(cfg, fingerprints, provenance=prov)


def test_a_changed_search_space_is_refused_even_with_a_rebuilt_heal(committed):
    cfg, study = committed
    fingerprints = {**study.user_attrs["fingerprints"], "model": "0123456789abcdef", "search_space": "feedfacefeedface"}
    with pytest.raises(storage.StudyMismatch, match="different model, search_space"):
        storage.open_study(cfg, fingerprints, provenance=rebuilt(study.user_attrs["model_provenance"], 1e-5))

"""Training runs are seeded and reproducible; early stopping keeps the best epoch."""

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from training.data import open_source  # noqa: E402
from training.dataset import prepare  # noqa: E402
from training.models import DEFAULTS  # noqa: E402
from training.train import TrainConfig, evaluate, fit, new_model, predict_split  # noqa: E402


def _run(synth_csv: Path, seed: int) -> tuple[list[dict[str, float]], dict[str, torch.Tensor]]:
    config = TrainConfig(
        model=DEFAULTS["nffm"].model_copy(update={"embed_dim": 4, "mlp_dims": (8,)}),
        epochs=2,
        batch_size=512,
        seed=seed,
    )
    prepared = prepare(open_source(synth_csv), config)
    model = new_model(prepared, config)
    result = fit(model, prepared, config, progress=False)
    return result.history, model.state_dict()


def test_same_seed_same_model(synth_csv: Path) -> None:
    first_history, first_state = _run(synth_csv, seed=5)
    second_history, second_state = _run(synth_csv, seed=5)
    assert first_history == second_history
    for name, tensor in first_state.items():
        torch.testing.assert_close(tensor, second_state[name], rtol=0, atol=0)


def test_other_seed_other_model(synth_csv: Path) -> None:
    assert _run(synth_csv, seed=5)[0] != _run(synth_csv, seed=6)[0]


def test_early_stopping_restores_the_best_epoch(synth_csv: Path) -> None:
    config = TrainConfig(
        model=DEFAULTS["ffm"].model_copy(update={"embed_dim": 8}),
        epochs=12,
        patience=1,
        learning_rate=0.05,  # overfits fast, so validation AUC peaks early
        batch_size=256,
    )
    prepared = prepare(open_source(synth_csv), config)
    model = new_model(prepared, config)
    result = fit(model, prepared, config, progress=False)
    best = max(result.history, key=lambda h: h["val_auc"])
    assert result.best_epoch == best["epoch"]
    assert len(result.history) < 12
    assert evaluate(model, prepared.val, "binary")["auc"] == pytest.approx(best["val_auc"])
    # the best epoch's validation scores are kept: they are the restored model's
    assert result.best_validation is not None
    kept, kept_labels, _ = result.best_validation
    scores, labels, _ = predict_split(model, prepared.val, "binary")
    np.testing.assert_allclose(kept, scores, rtol=1e-6)
    np.testing.assert_array_equal(kept_labels, labels)


def test_a_best_last_epoch_is_the_model_as_trained(synth_csv: Path) -> None:
    config = TrainConfig(model=DEFAULTS["lr"], epochs=2, patience=2, learning_rate=0.005)
    prepared = prepare(open_source(synth_csv), config)
    model = new_model(prepared, config)
    result = fit(model, prepared, config, progress=False)
    assert result.best_epoch == 2  # a slow learner still improving
    assert evaluate(model, prepared.val, "binary")["auc"] == pytest.approx(
        result.history[-1]["val_auc"]
    )


def test_a_step_updates_only_the_rows_its_batch_read(synth_csv: Path) -> None:
    """Sparse updates: rows no batch touched keep their initial values (dense Adam with
    weight decay would have moved every row), and unseen rows hold the field average."""
    from training.layers import unseen_rows

    config = TrainConfig(
        model=DEFAULTS["ffm"].model_copy(update={"embed_dim": 4}), epochs=1, batch_size=256
    )
    prepared = prepare(open_source(synth_csv), config)
    model = new_model(prepared, config)
    before = model.field_aware.embedding.weight.detach().clone()
    fit(model, prepared, config, progress=False)
    after = model.field_aware.embedding.weight.detach()
    offsets = torch.tensor([0, *prepared.spec.field_dims[:-1]]).cumsum(0)
    touched = torch.unique(
        torch.from_numpy(prepared.train.load().indices.astype("int64")) + offsets
    )
    untouched = torch.ones(len(before), dtype=torch.bool)
    untouched[touched] = False
    untouched[unseen_rows(prepared.spec.field_dims)] = False
    assert untouched.any()
    torch.testing.assert_close(after[untouched], before[untouched], rtol=0, atol=0)
    assert not torch.equal(after[touched], before[touched])

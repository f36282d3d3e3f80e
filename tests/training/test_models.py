import pytest

torch = pytest.importorskip("torch")

from training.models import DEFAULTS, MODELS, build_model  # noqa: E402
from training.optim import SparseOptimizer  # noqa: E402
from training.train import batch_loss  # noqa: E402

FIELD_DIMS = (12, 9, 6, 5)
LADDER = sorted(MODELS)


def _batch(size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    indices = torch.stack(
        [torch.randint(0, d, (size,), generator=generator) for d in FIELD_DIMS], dim=1
    )
    labels = torch.randint(0, 2, (size,), generator=generator).float()
    return indices, labels


def _small(name: str) -> torch.nn.Module:
    config = DEFAULTS[name].model_copy(update={"embed_dim": 4, "mlp_dims": (16,), "dropout": 0.0})
    torch.manual_seed(0)
    return build_model(FIELD_DIMS, config)


@pytest.mark.parametrize("name", LADDER)
def test_forward_shape_and_dtype(name: str) -> None:
    indices, _ = _batch(7)
    out = _small(name)(indices)
    assert out.shape == (7,)
    assert out.dtype == torch.float32


@pytest.mark.parametrize("name", LADDER)
def test_one_sparse_adam_step_lowers_the_loss(name: str) -> None:
    model = _small(name)
    indices, labels = _batch()
    optimizer = SparseOptimizer(model, FIELD_DIMS, learning_rate=1e-2, l2=0.0)
    before = batch_loss(model(indices), labels, None, "binary")
    before.backward()
    optimizer.step()
    with torch.no_grad():
        after = batch_loss(model(indices), labels, None, "binary")
    assert after < before


@pytest.mark.parametrize("name", LADDER)
def test_can_overfit_a_tiny_set(name: str) -> None:
    model = _small(name)
    indices, labels = _batch(16, seed=1)
    indices[:, 0] = torch.arange(16) % FIELD_DIMS[0]  # rows distinguishable by field 0
    optimizer = SparseOptimizer(model, FIELD_DIMS, learning_rate=5e-2, l2=0.0)
    for _ in range(300):
        optimizer.zero_grad()
        loss = batch_loss(model(indices), labels, None, "binary")
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1


def test_defaults_follow_the_design() -> None:
    assert DEFAULTS["nffm"].embed_dim == 16
    assert DEFAULTS["nffm"].mlp_dims == (100,)
    assert DEFAULTS["nffm"].dropout == 0.0
    assert DEFAULTS["deepfm"].embed_dim == 10
    assert DEFAULTS["deepfm"].mlp_dims == (400, 400, 400)
    assert DEFAULTS["deepfm"].dropout == 0.5


def test_interaction_models_need_two_fields() -> None:
    with pytest.raises(ValueError, match="two fields"):
        build_model((5,), DEFAULTS["ffm"])

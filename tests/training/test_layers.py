"""Fast vectorised formulas against plain pairwise loops."""

import itertools

import pytest

torch = pytest.importorskip("torch")

from training.layers import (  # noqa: E402
    MLP,
    BiInteractionPooling,
    Dropout,
    FactorizationMachine,
    FeaturesEmbedding,
    FeaturesLinear,
    FieldAwareEmbedding,
    FieldAwareTerms,
    fill_unseen_rows,
    sparse_table,
)

FIELD_DIMS = (5, 7, 3, 4)


def test_fm_matches_pairwise_loop() -> None:
    embeddings = torch.randn(6, 4, 3, dtype=torch.float64)
    expected = sum(
        (embeddings[:, i] * embeddings[:, j]).sum(dim=1)
        for i, j in itertools.combinations(range(4), 2)
    )
    torch.testing.assert_close(FactorizationMachine()(embeddings), expected)


def test_bi_interaction_matches_pairwise_loop() -> None:
    embeddings = torch.randn(6, 4, 3, dtype=torch.float64)
    expected = sum(
        embeddings[:, i] * embeddings[:, j] for i, j in itertools.combinations(range(4), 2)
    )
    torch.testing.assert_close(BiInteractionPooling()(embeddings), expected)


@pytest.mark.parametrize("form", ["trained", "served"])
def test_field_aware_terms_match_pairwise_loop(form: str) -> None:
    indices = torch.stack([torch.randint(0, d, (6,)) for d in FIELD_DIMS], dim=1)
    embedding = FieldAwareEmbedding(FIELD_DIMS, embed_dim=3)
    terms = FieldAwareTerms(len(FIELD_DIMS), 3)
    with torch.no_grad():
        embedding.embedding.weight.normal_()
        terms.bias.fill_(0.5)
    table = embedding.embedding.weight
    vectors = table[:, :-1].view(-1, len(FIELD_DIMS), 3)
    offsets = [0, 5, 12, 15]
    rows = [indices[:, i] + offsets[i] for i in range(len(FIELD_DIMS))]
    expected_products = torch.stack(
        [
            vectors[rows[i], j] * vectors[rows[j], i]
            for i, j in itertools.combinations(range(len(FIELD_DIMS)), 2)
        ],
        dim=1,
    )
    expected_linear = 0.5 + sum(table[r, -1] for r in rows)
    rows = embedding(indices)
    # The served form is what the exported graph computes; torch runs it only here.
    linear, products = terms(rows) if form == "trained" else terms.served(rows)
    torch.testing.assert_close(products, expected_products)
    torch.testing.assert_close(linear, expected_linear)


def test_field_aware_rows_hold_vectors_then_weight() -> None:
    embedding = FieldAwareEmbedding(FIELD_DIMS, embed_dim=3)
    table = embedding.embedding.weight
    assert table.shape == (sum(FIELD_DIMS), len(FIELD_DIMS) * 3 + 1)
    assert torch.count_nonzero(table[:, -1]) == 0  # first-order weights start at zero
    rows = embedding(torch.zeros(2, 4, dtype=torch.int64))
    torch.testing.assert_close(rows.vectors[:, 1, 6:9], table[5, 6:9].expand(2, 3))
    torch.testing.assert_close(rows.weights[:, 1], table[5, -1].expand(2))


def test_offsets_keep_fields_apart() -> None:
    linear = FeaturesLinear(FIELD_DIMS)
    with torch.no_grad():
        linear.weight.weight.copy_(torch.arange(sum(FIELD_DIMS), dtype=torch.float32)[:, None])
    # index 0 of each field -> global rows 0, 5, 12, 15
    assert linear(torch.zeros(1, 4, dtype=torch.int64)).item() == pytest.approx(0 + 5 + 12 + 15)


def test_tables_start_small_and_train_with_sparse_gradients() -> None:
    torch.manual_seed(0)
    vectors = FeaturesEmbedding((20_000, 30_000), 8).embedding.weight
    assert abs(vectors.mean().item()) < 1e-4
    assert vectors.std().item() == pytest.approx(0.01, rel=0.01)  # N(0, 0.01^2), drawn once
    assert torch.count_nonzero(FeaturesLinear(FIELD_DIMS).weight.weight) == 0
    table = sparse_table(10, 4, std=0.01)
    assert table.weight.requires_grad
    table(torch.tensor([[1, 3]])).sum().backward()
    assert table.weight.grad is not None
    assert table.weight.grad.is_sparse


def test_embedding_shapes() -> None:
    indices = torch.zeros(2, 4, dtype=torch.int64)
    assert FeaturesEmbedding(FIELD_DIMS, 8)(indices).shape == (2, 4, 8)
    rows = FieldAwareEmbedding(FIELD_DIMS, 8)(indices)
    assert rows.vectors.shape == (2, 4, 4 * 8)
    assert rows.weights.shape == (2, 4)
    assert rows.table_rows is not None
    assert rows.table_rows.shape == (2, 4, 4 * 8 + 1)


@pytest.mark.parametrize(("dropout", "batch_norm"), [(0.0, False), (0.5, True)])
def test_mlp_options(dropout: float, batch_norm: bool) -> None:
    mlp = MLP(10, (8, 4), dropout=dropout, batch_norm=batch_norm)
    kinds = {type(m).__name__ for m in mlp.modules()}
    assert ("Dropout" in kinds) == (dropout > 0)
    assert ("BatchNorm1d" in kinds) == batch_norm
    assert mlp(torch.randn(3, 10)).shape == (3,)


def test_mlp_rejects_bad_dropout() -> None:
    with pytest.raises(ValueError, match="dropout"):
        MLP(4, (2,), dropout=1.0)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_dropout_keeps_1_minus_p_and_preserves_the_mean(p: float) -> None:
    torch.manual_seed(0)
    inputs = torch.ones(1000, 1001, requires_grad=True)  # odd size: a partial last word
    outputs = Dropout(p).train()(inputs)
    kept = outputs != 0
    assert kept.float().mean().item() == pytest.approx(1 - p, abs=0.002)
    assert outputs.mean().item() == pytest.approx(1.0, abs=0.01)
    outputs.sum().backward()
    assert inputs.grad is not None
    assert torch.equal(inputs.grad != 0, kept)  # gradient flows through kept units only


def test_dropout_is_seeded_and_identity_in_eval() -> None:
    layer = Dropout(0.5)
    inputs = torch.randn(64, 32)
    draws = []
    for _ in range(2):
        torch.manual_seed(3)
        draws.append(layer.train()(inputs))
    assert torch.equal(draws[0], draws[1])
    assert not torch.equal(draws[0], Dropout(0.5).train()(inputs))
    assert layer.eval()(inputs) is inputs
    assert Dropout(0.0).train()(inputs) is inputs


def test_dropout_rejects_bad_rate() -> None:
    with pytest.raises(ValueError, match="dropout"):
        Dropout(-0.1)


def test_fill_unseen_rows_is_the_plain_field_average() -> None:
    embedding = FeaturesEmbedding(FIELD_DIMS, 3)
    model = torch.nn.Sequential(embedding)
    fill_unseen_rows(model, FIELD_DIMS)
    table = embedding.embedding.weight
    start = 0
    for size in FIELD_DIMS:
        torch.testing.assert_close(table[start + 1], table[start + 2 : start + size].mean(dim=0))
        start += size

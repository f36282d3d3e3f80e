"""POST /predict and /explain through the real app."""

import pytest
from fastapi.testclient import TestClient

from support.prometheus import metric

ROW = {"c0": "c0_1", "c1": "c1_0", "c3": "c3_2", "n0": 2.5, "n1": 0.3}


def test_single_prediction(client: TestClient) -> None:
    body = client.post("/predict", json={"features": ROW}).json()
    assert 0.0 < body["prediction"] < 1.0
    assert body["cached"] is False
    assert body["model_version"] == client.get("/model").json()["version"]


def test_repeat_request_is_a_cache_hit_regardless_of_key_order(client: TestClient) -> None:
    first = client.post("/predict", json={"features": ROW}).json()
    reordered = dict(reversed(list(ROW.items())))
    second = client.post("/predict", json={"features": reordered}).json()
    assert second["cached"] is True
    assert second["prediction"] == first["prediction"]


def test_two_unseen_values_share_a_cache_entry(client: TestClient) -> None:
    first = client.post("/predict", json={"features": {**ROW, "c0": "brand-new-1"}}).json()
    second = client.post("/predict", json={"features": {**ROW, "c0": "brand-new-2"}}).json()
    assert first["cached"] is False
    assert second["cached"] is True
    assert second["prediction"] == first["prediction"]


def test_numbers_and_strings_spell_the_same_value(client: TestClient) -> None:
    # "c1_0"-style tokens are strings; an all-digit token must match its number spelling
    a = client.post("/predict", json={"features": {"c0": "17"}}).json()
    b = client.post("/predict", json={"features": {"c0": 17}}).json()
    assert b["cached"] is True
    assert a["prediction"] == b["prediction"]


def test_batch_with_mixed_hits_and_misses(client: TestClient) -> None:
    client.post("/predict", json={"features": ROW})
    rows = [ROW, {**ROW, "c1": "c1_5"}, {}, ROW]
    body = client.post("/predict", json={"instances": rows}).json()
    assert body["cached"] == [True, False, False, True]
    assert body["cache_hits"] == 2
    assert len(body["predictions"]) == 4
    assert body["predictions"][0] == body["predictions"][3]
    # A batch row is stored from its second sight, so one-off rows cost no cache writes.
    again = client.post("/predict", json={"instances": rows}).json()
    assert again["cached"] == [True, False, False, True]
    third = client.post("/predict", json={"instances": rows}).json()
    assert third["cached"] == [True, True, True, True]
    assert third["predictions"] == pytest.approx(body["predictions"])
    single = client.post("/predict", json={"features": {**ROW, "c1": "c1_5"}}).json()
    assert single["cached"] is True
    assert single["prediction"] == pytest.approx(body["predictions"][1])


def _encoded_rows(client: TestClient) -> float:
    """Rows the service has encoded so far, from its /metrics."""
    return metric(client.get("/metrics").text, "ctr_encoded_rows_total")


def test_repeated_batch_rows_are_cache_hits(client: TestClient) -> None:
    rows = [{**ROW, "c1": f"c1_{i}"} for i in range(8)]
    first = client.post("/predict", json={"instances": rows}).json()
    client.post("/predict", json={"instances": rows})  # second sight: admitted
    again = client.post("/predict", json={"instances": rows}).json()
    assert again["cached"] == [True] * 8
    assert again["cache_hits"] == 8
    assert again["predictions"] == pytest.approx(first["predictions"])
    new_row = {**ROW, "c1": "c1_new"}
    mixed = client.post("/predict", json={"instances": [*rows[:3], new_row]}).json()
    assert mixed["cached"] == [True, True, True, False]
    assert mixed["predictions"][:3] == pytest.approx(first["predictions"][:3])
    respelled = client.post("/predict", json={"instances": [dict(reversed(rows[0].items()))]})
    assert respelled.json()["cached"] == [True]  # key order is not part of the key
    assert respelled.json()["predictions"] == pytest.approx(first["predictions"][:1])


def test_a_bad_row_among_known_rows_is_named_and_nothing_is_lost(client: TestClient) -> None:
    rows = [{**ROW, "c1": f"c1_{i}"} for i in range(4)]
    for _ in range(5):
        known = client.post("/predict", json={"instances": rows}).json()
    for bad, fragment, where in (
        (3, "Expected `object`, got `int` - at `$.instances[2]`", ["body"]),
        ({"nope": 1}, "unknown field", ["body", "instances", 2, "nope"]),
        ({**ROW, "n0": "ten"}, "expected a number", ["body", "instances", 2, "n0"]),
    ):
        for body in ({"instances": [*rows[:2], bad, rows[3]]},
                     {"features": None, "instances": [*rows[:2], bad, rows[3]]}):  # fmt: skip
            response = client.post("/predict", json=body)
            assert response.status_code == 422
            (problem,) = response.json()["detail"]
            assert fragment in problem["msg"]
            assert problem["loc"] == where
    after = client.post("/predict", json={"instances": rows}).json()
    assert after["cached"] == [True] * 4
    assert after["predictions"] == pytest.approx(known["predictions"])


@pytest.mark.parametrize(
    ("bad", "fragment", "where"),
    [
        (3, "Expected `object`, got `int` - at `$.instances[2]`", ["body"]),
        ({"nope": 1}, "unknown field", ["body", "instances", 2, "nope"]),
        ({**ROW, "n0": "ten"}, "expected a number", ["body", "instances", 2, "n0"]),
        ({**ROW, "c0": [1]}, "got list", ["body", "instances", 2, "c0"]),
    ],
)
def test_a_bad_row_in_a_fresh_batch_is_named(
    client: TestClient, bad: object, fragment: str, where: list[object]
) -> None:
    """Rows no cache knows are decoded with their body, straight into the model's fields:
    a bad one is named as the rows looked up by their text are."""
    rows = [{**ROW, "c1": f"c1_{i}"} for i in range(4)]
    response = client.post("/predict", json={"instances": [*rows[:2], bad, rows[3]]})
    assert response.status_code == 422
    (problem,) = response.json()["detail"]
    assert fragment in problem["msg"]
    assert problem["loc"] == where
    scored = client.post("/predict", json={"instances": rows}).json()
    assert scored["cached"] == [False] * 4
    alone = [client.post("/predict", json={"features": row}).json()["prediction"] for row in rows]
    assert scored["predictions"] == pytest.approx(alone)


def test_missing_fields_mean_missing(client: TestClient) -> None:
    empty = client.post("/predict", json={"features": {}}).json()
    nulls = client.post("/predict", json={"features": dict.fromkeys(ROW)}).json()
    assert nulls["cached"] is True
    assert nulls["prediction"] == empty["prediction"]


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ({"features": {"nope": 1}}, "unknown field"),
        ({"features": {"n0": "ten"}}, "expected a number"),
        ({"features": {"c0": [1, 2]}}, "c0"),
        ({"features": {"c0": {"a": 1}}}, "c0"),
        ({"instances": []}, "length >= 1"),
        ({}, "exactly one"),
        ({"features": ROW, "instances": [ROW]}, "exactly one"),
        ({"features": ROW, "extra": 1}, "extra"),
        ({"features": "c0=1"}, "Expected `object | null`, got `str` - at `$.features`"),
    ],
)
def test_bad_input_is_422_with_a_reason(client: TestClient, payload: object, fragment: str) -> None:
    response = client.post("/predict", json=payload)
    assert response.status_code == 422
    assert fragment in response.text


@pytest.mark.parametrize(
    ("raw", "where", "reason"),
    [
        (b'{"features": {"n0": NaN}}', ["body"], "Invalid JSON: JSON is malformed"),  # not JSON
        (b'{"features": {"n0": Infinity}}', ["body"], "Invalid JSON: JSON is malformed"),
        (b'{"features": ', ["body"], "Invalid JSON"),
        (b"not json", ["body"], "Invalid JSON"),
        (b"", ["body"], "Invalid JSON: Input data was truncated"),
    ],
)
def test_malformed_json_and_non_finite_numbers(
    client: TestClient, raw: bytes, where: list[str], reason: str
) -> None:
    response = client.post("/predict", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422
    (problem,) = response.json()["detail"]
    assert problem["loc"] == where
    assert reason in problem["msg"]


def test_oversized_batch_is_413(client: TestClient, settings) -> None:
    rows = [ROW] * (settings.max_batch_size + 1)
    response = client.post("/predict", json={"instances": rows})
    assert response.status_code == 413
    assert "CTR_MAX_BATCH_SIZE" in response.json()["detail"]


def test_explain_effects_are_sorted_and_add_up(client: TestClient) -> None:
    body = client.post("/explain", json={"features": {**ROW, "c2": "unheard-of"}}).json()
    effects = body["effects"]
    assert [e["field"] for e in effects] != []
    magnitudes = [abs(e["effect"]) for e in effects]
    assert magnitudes == sorted(magnitudes, reverse=True)
    for effect in effects:
        assert effect["effect"] == pytest.approx(body["prediction"] - effect["prediction_without"])
    total = body["baseline"] + sum(e["effect"] for e in effects) + body["interaction_residual"]
    assert total == pytest.approx(body["prediction"], abs=1e-6)
    kinds = {e["field"]: e["encoded_as"] for e in effects}
    assert kinds["c2"] == "unseen"
    assert kinds["c4"] == "missing"
    assert kinds["c0"] == "value"
    unseen = next(e for e in effects if e["field"] == "c2")
    assert unseen["effect"] == pytest.approx(0.0, abs=1e-7)  # already at the field average
    direct = client.post("/predict", json={"features": {**ROW, "c2": "unheard-of"}}).json()
    assert direct["prediction"] == pytest.approx(body["prediction"])


def test_explain_rejects_unknown_fields(client: TestClient) -> None:
    assert client.post("/explain", json={"features": {"bogus": 1}}).status_code == 422

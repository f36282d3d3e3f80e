# Everything a fresh machine needs: `make run` (set up, train, export, serve) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DATA := data/synth.csv
MODEL_DIR ?= models/default
ROWS ?= 200000
HOST ?= 127.0.0.1
PORT ?= 8000
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup run model models serve test bench bench-open bench-versus bench-calibration bench-thresholds peers bench-train bench-dist bench-loop bench-models bench-large bench-daily reliability quality loadtest loop clean

# `make run` installs what the main job needs (train + serve); `make test` adds the rest.
RUN_DEPS := $(VENV)/.installed-run
TEST_DEPS := $(VENV)/.installed-test

setup: $(RUN_DEPS)

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(RUN_DEPS): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[train]'
	touch $@

$(TEST_DEPS): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[train,dev,bench]'
	touch $@ $(RUN_DEPS)

$(DATA): | $(RUN_DEPS)
	$(VENV)/bin/ctrserve synth --rows $(ROWS) --seed 0 --out $(DATA)

# A second run finds the exported model and goes straight to serving (trained again when
# what a version keeps changes: its training statistics for `ctrserve drift`, its
# calibration, its manifest's format).
VERSION_FORMAT := training/statistics.py training/calibration.py app/repository/manifest.py
$(MODEL_DIR)/CURRENT: $(VERSION_FORMAT) | $(DATA)
	$(VENV)/bin/ctrserve train --data $(DATA) --model nffm --out $(MODEL_DIR) --no-progress

model: setup $(MODEL_DIR)/CURRENT

# The models the container and the Kubernetes manifests serve: the click model above, and a
# conversion model beside it (a stand-in: a DeepFM of other fields of the same log).
CVR_DIR := models/cvr
$(CVR_DIR)/CURRENT: $(VERSION_FORMAT) | $(DATA)
	$(VENV)/bin/ctrserve train --data $(DATA) --model deepfm --ignore c2,c3,n1 --out $(CVR_DIR) \
		--no-progress

models: model $(CVR_DIR)/CURRENT

run: model
	@echo
	@echo "ctrserve: serving $(MODEL_DIR) on http://$(HOST):$(PORT)  (Ctrl-C stops it). Try:"
	@echo "  curl -s -X POST http://$(HOST):$(PORT)/predict -H 'content-type: application/json' \\"
	@echo "       -d '{\"features\": {\"c0\": \"c0_1\", \"c3\": \"c3_7\", \"n0\": 2.5}}'"
	@echo
	CTR_MODEL_REPOSITORY=$(MODEL_DIR) CTR_HOST=$(HOST) CTR_PORT=$(PORT) $(VENV)/bin/ctrserve serve

serve: setup
	CTR_MODEL_REPOSITORY=$(MODEL_DIR) CTR_HOST=$(HOST) CTR_PORT=$(PORT) $(VENV)/bin/ctrserve serve

test: $(TEST_DEPS)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy app training benchmarks loadtest support scripts ctrserve.py
	$(PY) -m pytest
	$(PY) scripts/audit.py

# The serving peers (Seldon MLServer, KServe, Triton via PyTriton), each in an
# environment of its own.
PEERS := .venv-peers
$(PEERS)/%/.installed: benchmarks/peers/%.txt
	$(PYTHON) -m venv $(PEERS)/$*
	$(PEERS)/$*/bin/pip install --quiet -r $<
	touch $@

peers: $(PEERS)/mlserver/.installed $(PEERS)/kserve/.installed \
	$(PEERS)/pytriton/.installed

# A production-size model: Criteo-shaped 39 fields, NFFM k=16 with one hidden layer, and
# DeepFM, trained on 200k generated rows (the file is deleted afterwards). Trained again when
# the layers or the exporter change, so that the benchmarks run the graph of this checkout.
PRODUCTION := models/production
$(PRODUCTION)/nffm/CURRENT: training/layers.py training/models.py training/export.py training/calibration.py \
		app/repository/manifest.py | $(TEST_DEPS)
	mkdir -p data
	$(VENV)/bin/ctrserve synth --layout criteo --rows 200000 --seed 7 --out data/criteo_200k.tsv
	$(VENV)/bin/ctrserve train --data data/criteo_200k.tsv --model nffm --embed-dim 16 \
		--mlp-dims 100 --epochs 1 --max-vocab 20000 --out $(PRODUCTION)/nffm --no-progress
	$(VENV)/bin/ctrserve train --data data/criteo_200k.tsv --model deepfm --epochs 1 \
		--max-vocab 20000 --out $(PRODUCTION)/deepfm --no-progress
	rm -f data/criteo_200k.tsv

# Side-by-side serving benchmarks -> docs/BENCHMARKS.md (installs wrk and matplotlib).
# The ladder's torch checkpoints (for the onnxruntime-vs-torch section) are retrained when
# the layers change: a checkpoint of other layers cannot be loaded.
LADDER := models/ladder
$(LADDER)/nffm/CURRENT: training/layers.py training/models.py app/repository/manifest.py \
		| $(DATA) $(TEST_DEPS)
	$(PY) -m training ladder --data $(DATA) --out-dir $(LADDER) --no-progress

bench: model peers $(PRODUCTION)/nffm/CURRENT $(LADDER)/nffm/CURRENT $(TEST_DEPS)
	command -v wrk >/dev/null || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq wrk)
	$(PY) -m benchmarks.serving
	$(PY) -m benchmarks.open_loop
	$(PY) -m benchmarks.open_loop --settings
	$(PY) -m benchmarks.thresholds

# Closed loop against the revision issue 33 holds the serving core to (its suite gave ctrserve
# a response cache, a setting this tree no longer has) -> docs/VERSUS.md
bench-versus: model $(TEST_DEPS)
	command -v wrk >/dev/null || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq wrk)
	$(PY) -m benchmarks.versus --revision 0168c04 --env CTR_RESPONSE_CACHE_MAX_BYTES=1066666

# Every size threshold of the serving path forced to each side in turn, in process (the
# production NFFM's sweeps where it is built) -> docs/THRESHOLDS.md
bench-thresholds: model $(TEST_DEPS)
	$(PY) -m benchmarks.thresholds

# What the calibration in the served graph costs an onnxruntime call, by rows: the graph
# without it, with the knots counted in int64 (before), as exported now -> docs/CALIBRATION_COST.md
bench-calibration: model $(TEST_DEPS)
	$(PY) -m benchmarks.calibration_cost

# Open loop: each server alone at a ladder of fixed request rates (k6), default model and the
# production NFFM -> docs/OPEN_LOOP.md; ctrserve's tuned settings on and off ->
# docs/OPEN_LOOP_SETTINGS.md
bench-open: model peers $(PRODUCTION)/nffm/CURRENT $(TEST_DEPS)
	$(PY) -m benchmarks.open_loop
	$(PY) -m benchmarks.open_loop --settings

# Training at scale: Criteo-shaped synthetic files of 1M, 3M and 10M rows (generated, then
# deleted; ~4 GB of disk at the peak), peak RSS and speed vs DeepCTR-Torch -> docs/TRAINING.md
bench-train: $(TEST_DEPS)
	$(PY) -m benchmarks.training

# 1 vs 2 torchrun processes on 1M Criteo-shaped rows: samples/s, AUC, communication per step
# -> docs/DISTRIBUTED.md
bench-dist: $(TEST_DEPS)
	$(PY) -m benchmarks.distributed

# The feedback loop's costs: the prediction log off vs on (open and closed loop), the join of
# a 1M-record log (peak RSS), ctrserve predict on 1M-10M Criteo-shaped rows (generated, then
# deleted; ~2.5 GB of disk at the peak) -> docs/FEEDBACK.md
# Many models in one server: a shadow's cost, two models against one, a sticky split
# -> docs/MANY_MODELS.md
bench-models: models $(TEST_DEPS)
	$(PY) -m benchmarks.many_models

# Models past 2 GiB: a 2.27 GiB NFFM served by 1 and 2 workers (RSS, PSS), weights inside the
# graph vs mapped beside it, float16/int8 tables (bytes, AUC, speed); ~6 GB of disk at the
# peak, deleted afterwards -> docs/LARGE_MODELS.md
bench-large: $(TEST_DEPS)
	$(PY) -m benchmarks.large_models

# Daily retraining: warm start vs from scratch on two Criteo-shaped days, thirty warm days
# under a vocabulary cap, negative down-sampling on 10M rows (~2 GB of disk at the peak,
# deleted afterwards) -> docs/DAILY.md
bench-daily: $(TEST_DEPS)
	$(PY) -m benchmarks.daily

bench-loop: model $(PRODUCTION)/nffm/CURRENT $(TEST_DEPS)
	command -v wrk >/dev/null || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq wrk)
	$(PY) -m benchmarks.feedback

# Fuzzing, limits, faults, reload under load, memory bound, shutdown, audit -> docs/RELIABILITY.md
reliability: model $(TEST_DEPS)
	command -v wrk >/dev/null || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq wrk)
	$(PY) -m benchmarks.reliability

# The ladder vs LightGBM vs DeepCTR-Torch on Criteo, Avazu and 1M synthetic rows -> docs/QUALITY.md
quality: $(TEST_DEPS)
	$(PY) -m benchmarks.quality

# A bounded headless locust run against a fresh server on 127.0.0.1; fails on any failure.
loadtest: model $(TEST_DEPS)
	$(PY) -m loadtest.run --model-dir $(MODEL_DIR) --users 50 --duration 30

# The feedback loop end to end: serve two synthetic days with the prediction log on, join
# day 1's clicks, report drift (day 2 shifted), train the next model -> docs/LOOP.md
loop: model $(TEST_DEPS)
	$(PY) -m loadtest.feedback_loop

clean:
	rm -rf $(VENV) $(PEERS) data .pytest_cache .ruff_cache .mypy_cache

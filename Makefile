# tf-feature-pipeline — every target runs inside .venv, created on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
BACKBONE ?= mobilenet_v2_quant
LAYER    ?=
HEAD     ?= auto
C        ?= auto
DATA     ?=
FEATURES ?=
MODEL    ?=
OUT      ?=
REPORT   ?= models/demo-cars-report
BENCH_ARGS ?=
GPU_PY     ?= python3

.PHONY: install demo test test-fast features train score evaluate report screenshot suspects backbones reference bench bench-gpu bench-gpu-prepare clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	PYTHONWARNINGS=ignore $(PY) -m pip install --quiet -e '.[test]'  # no setuptools notices about editable installs
	touch $@

demo: install  ## the whole flow offline on the bundled cars sample
	$(PY) -m pipeline demo

# Tests run on 2 pytest-xdist workers, one test file per worker at a time (module fixtures are built once);
# TEST_WORKERS=0 runs them in this process. Bytecode is written even where PYTHONDONTWRITEBYTECODE is set:
# else every worker rewrites every test module's asserts again and every CLI subprocess of the tests
# compiles the package again.
TEST_WORKERS ?= 2
PYTEST_N := -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder
PYTEST   := env -u PYTHONDONTWRITEBYTECODE $(PY) -m pytest

test: install  ## the full test suite (tests needing ../shared skip without it; -rsx prints why, and why 3 xfail)
	$(PYTEST) -q -rsx $(PYTEST_N)

test-fast: install  ## every test but the slow ones and those needing ../shared (about a minute on 2 cores)
	$(PYTEST) -q -rsx $(PYTEST_N) -m "not slow and not shared"

features: install  ## make features DATA=path/to/images [BACKBONE=...] [LAYER=...] [OUT=features/...]
	@test -n "$(DATA)" || { echo "usage: make features DATA=folder [BACKBONE=$(BACKBONE)] [LAYER=penultimate|logits|predictions|NAME] [OUT=dir]"; exit 2; }
	$(PY) -m pipeline featurize "$(DATA)" --backbone "$(BACKBONE)" $(if $(LAYER),--layer "$(LAYER)") $(if $(OUT),--out "$(OUT)")

train: install  ## make train FEATURES=features/... [HEAD=auto] [C=auto] [MODEL=models/x.head.npz]
	@test -n "$(FEATURES)" || { echo "usage: make train FEATURES=dir [HEAD=$(HEAD)] [C=$(C)] [MODEL=models/NAME.head.npz]"; exit 2; }
	$(PY) -m pipeline train "$(FEATURES)" --head "$(HEAD)" --C "$(C)" --out "$(or $(MODEL),models/$(notdir $(FEATURES))-$(HEAD).head.npz)"

score: install  ## make score MODEL=models/x.head.npz DATA=path/to/images [OUT=predictions.csv]
	@test -n "$(MODEL)" -a -n "$(DATA)" || { echo "usage: make score MODEL=file.head.npz DATA=folder [OUT=predictions.csv]"; exit 2; }
	$(PY) -m pipeline score "$(MODEL)" "$(DATA)" --out "$(or $(OUT),predictions.csv)"

evaluate: install  ## make evaluate MODEL=models/x.head.npz FEATURES=features/...
	@test -n "$(MODEL)" -a -n "$(FEATURES)" || { echo "usage: make evaluate MODEL=file.head.npz FEATURES=dir"; exit 2; }
	$(PY) -m pipeline evaluate "$(MODEL)" "$(FEATURES)"

report: install  ## make report MODEL=models/x.head.npz FEATURES=features/... REPORT=reports/x  (index.html + PNGs)
	@test -n "$(MODEL)" -a -n "$(FEATURES)" || { echo "usage: make report MODEL=file.head.npz FEATURES=dir [REPORT=$(REPORT)]"; exit 2; }
	$(PY) -m pipeline evaluate "$(MODEL)" "$(FEATURES)" --report "$(REPORT)"

screenshot: install  ## the whole page of REPORT/index.html in headless Chromium (apt-get install chromium) -> REPORT/screenshot.png
	@command -v chromium >/dev/null || { echo "needs Debian's chromium: apt-get install chromium"; exit 2; }
	@test -f "$(REPORT)/index.html" || { echo "no $(REPORT)/index.html: run make demo, or make report REPORT=dir"; exit 2; }
	@$(PY) -m pipeline.reports.screenshot "$(REPORT)"

suspects: install  ## make suspects FEATURES=features/...: likely mislabelled images
	@test -n "$(FEATURES)" || { echo "usage: make suspects FEATURES=dir"; exit 2; }
	$(PY) -m pipeline suspects "$(FEATURES)"

bench: install  ## side-by-side featurization benchmark on ../shared/data/catsdogs (figures in BENCHMARKS.md)
	$(PY) bench/bench.py $(BENCH_ARGS)

.PHONY: bench-audit
bench-audit: install  ## audit at scale (100,000 x 1280 synthetic) and on real photos with planted copies (BENCHMARKS.md)
	$(PY) bench/audit_scale.py $(BENCH_ARGS)
	$(PY) bench/audit_realdata.py

.PHONY: bench-train
bench-train: install  ## train time of the default head, this code against main's, side by side (BENCHMARKS.md)
	$(PY) bench/train_speed.py $(BENCH_ARGS)

.PHONY: bench-relabel
bench-relabel: install  ## what a label fix costs: a corrected CSV, files moved between class folders, against the first run (BENCHMARKS.md)
	$(PY) bench/relabel.py $(BENCH_ARGS)

.PHONY: bench-serve
bench-serve: install  ## load test of `serve` on loopback against batch score (figures in BENCHMARKS.md)
	$(PY) bench/serve_bench.py $(BENCH_ARGS)

bench-gpu-prepare: install  ## wheels and JPEGs for bench/gpu.py into .gpu/ (carried to a GPU machine; BENCHMARKS.md)
	PYTHON=$(PY) bash bench/gpu-prepare.sh

bench-gpu:  ## on a GPU machine with JAX and no TensorFlow, after bench-gpu-prepare (no venv: its python3)
	$(GPU_PY) -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/tfp-site .gpu/whl/*.whl
	PYTHONPATH=/tmp/tfp-site $(GPU_PY) bench/gpu.py --images .gpu/imgs $(BENCH_ARGS)

backbones: install
	$(PY) -m pipeline backbones

reference: install  ## reproduce the reference accuracies on ../shared (catsdogs, cars)
	$(PY) -m pytest -q -m shared -p no:randomly tests/realdata/test_reference.py -s

clean:
	rm -rf $(VENV) build *.egg-info

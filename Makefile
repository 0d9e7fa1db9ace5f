# The README's two commands are `make demo` and `make test`; both create the
# virtualenv on first use, so a fresh clone needs only python3 (3.10-3.12), make and git.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup demo full test test-fast lab lint strip clean-demo

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)   ## the whole chain on the embedded sample catalogue + tiny model -> reports/demo/
	$(PY) -m shoelib.run --profile demo

full: $(STAMP)   ## the real job (needs the Kaggle dataset and SD 1.5, see README)
	$(PY) -m shoelib.run --profile full

test: $(STAMP)   ## the whole suite, including the end-to-end papermill run of the demo profile
	$(PY) -m pytest -q

test-fast: $(STAMP)  ## everything but the end-to-end runs
	$(PY) -m pytest -q -m "not slow"

# Jupyter refuses to start as root unless told; containers often run as root, where it is
# the only user. --allow-root is passed only then, so a normal user keeps the refusal.
lab: $(STAMP)
	$(PY) -m shoelib.demo
	$(VENV)/bin/jupyter lab notebooks/ $$(test "$$(id -u)" = 0 && echo --allow-root)

lint: $(STAMP)
	$(VENV)/bin/ruff check shoelib tests benchmarks notebooks

strip: $(STAMP)  ## strip outputs from notebooks/ (keeps the parameters tag)
	$(VENV)/bin/nbstripout notebooks/*.ipynb

clean-demo:
	rm -rf data/demo reports/demo

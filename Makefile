# make serve: build what the model needs and start TorchServe on 127.0.0.1:8080
# make test:  build the default model's archive and run the whole test suite
# make bench: the benchmark (bench/run.py), results in bench/results/
# Each step runs only when its inputs changed.
#
# make serve MODEL_DIR=path/to/checkpoint serves your own sequence-classification folder.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEFAULT_MODEL := models/minilm-tweets
MODEL_DIR ?= $(DEFAULT_MODEL)
MAR := model_store/sentiment.mar
INT8_MAR := model_store/sentiment-int8.mar
GRPC_STUBS := build/grpc/inference_pb2_grpc.py
ARCHIVED_FROM := model_store/.archived-from

.PHONY: serve stop test bench venv model archive grpc clean FORCE

serve: $(MAR)
	$(PY) -m serving.serve

stop:
	$(VENV)/bin/torchserve --stop

test: $(INT8_MAR) $(GRPC_STUBS)
	$(MAKE) archive MODEL_DIR=$(DEFAULT_MODEL)
	$(PY) -m pytest tests

bench: $(DEFAULT_MODEL)/model_card.json $(VENV)/.bench-installed
	$(PY) -m bench.run

venv: $(VENV)/.installed
$(VENV)/.installed: requirements.txt requirements-nodeps.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --disable-pip-version-check --no-deps -r requirements-nodeps.txt
	touch $@

$(VENV)/.bench-installed: $(VENV)/.installed bench/requirements.txt
	$(PY) -m pip install --disable-pip-version-check -r bench/requirements.txt
	touch $@

model: $(DEFAULT_MODEL)/model_card.json
$(DEFAULT_MODEL)/model_card.json: $(VENV)/.installed serving/build_model.py serving/tweets.py
	$(PY) -m serving.build_model --out $(DEFAULT_MODEL)

ifeq ($(MODEL_DIR),$(DEFAULT_MODEL))
MODEL_FILES := $(DEFAULT_MODEL)/model_card.json
else
MODEL_FILES := $(wildcard $(MODEL_DIR)/*)
endif

# Rewritten only when MODEL_DIR changes, so that switching folders re-archives.
$(ARCHIVED_FROM): FORCE
	@mkdir -p $(@D)
	@echo '$(abspath $(MODEL_DIR))' | cmp -s - $@ || echo '$(abspath $(MODEL_DIR))' > $@

HANDLER_FILES := handlers/sentiment_handler.py handlers/text_classification.py model-config.yaml archive.sh

archive: $(MAR)
$(MAR): $(VENV)/.installed $(ARCHIVED_FROM) $(MODEL_FILES) $(HANDLER_FILES)
	./archive.sh --model $(MODEL_DIR)

# The default model quantized to int8 at load, as version 2.0 of the same model.
$(INT8_MAR): $(VENV)/.installed $(DEFAULT_MODEL)/model_card.json $(HANDLER_FILES)
	./archive.sh --model $(DEFAULT_MODEL) --version 2.0 --option quantize=int8 --out $@

grpc: $(GRPC_STUBS)
$(GRPC_STUBS): $(VENV)/.installed
	$(PY) -m serving.grpc_stubs build/grpc

clean:
	rm -rf $(DEFAULT_MODEL) model_store logs build

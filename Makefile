# make serve: build what the model needs and start TorchServe on 127.0.0.1:8080
# make test:  build the default model's archive and run the whole test suite
# Each step runs only when its inputs changed.
#
# make serve MODEL_DIR=path/to/checkpoint serves your own sequence-classification folder.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEFAULT_MODEL := models/minilm-tweets
MODEL_DIR ?= $(DEFAULT_MODEL)
MAR := model_store/sentiment.mar
ARCHIVED_FROM := model_store/.archived-from

.PHONY: serve stop test venv model archive clean FORCE

serve: $(MAR)
	$(PY) -m serving.serve

stop:
	$(VENV)/bin/torchserve --stop

test:
	$(MAKE) archive MODEL_DIR=$(DEFAULT_MODEL)
	$(PY) -m pytest tests

venv: $(VENV)/.installed
$(VENV)/.installed: requirements.txt requirements-nodeps.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --disable-pip-version-check --no-deps -r requirements-nodeps.txt
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

archive: $(MAR)
$(MAR): $(VENV)/.installed $(ARCHIVED_FROM) $(MODEL_FILES) handlers/sentiment_handler.py handlers/text_classification.py model-config.yaml archive.sh
	./archive.sh --model $(MODEL_DIR)

clean:
	rm -rf $(DEFAULT_MODEL) model_store logs

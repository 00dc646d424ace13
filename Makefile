# wgagent developer entry points. `make demo` and `make test` install what they need
# (Debian packages through apt-get, Python packages into .venv) and must run as root:
# they build network namespaces with real WireGuard.

VENV      ?= .venv
PY        := $(VENV)/bin/python
APT_PKGS  := wireguard-tools wireguard-go iproute2 iputils-ping
PYTEST    ?= $(PY) -m pytest

.PHONY: deps venv test unit demo clean

deps: venv
	@missing=""; for t in wg wireguard-go ip ping; do command -v $$t >/dev/null || missing=1; done; \
	if [ -n "$$missing" ]; then \
		echo ">> installing $(APT_PKGS)"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PKGS) >/dev/null; \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: setup.py
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e . pytest
	touch $@

test: deps
	$(PYTEST) -v -rs tests

unit: venv
	$(PYTEST) -q tests -m "not root"

demo: deps
	$(PY) demo/s1_roaming.py

clean:
	rm -rf $(VENV) build *.egg-info

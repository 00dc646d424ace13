# wgagent developer entry points. `make demo` and `make test` install what they need
# (Debian packages through apt-get, Python packages into .venv) and must run as root:
# they build network namespaces with real WireGuard.

VENV      ?= .venv
PY        := $(VENV)/bin/python
APT_PKGS  := wireguard-tools wireguard-go iproute2 iputils-ping busybox-static shellcheck kmod qemu-system-x86 file python3-venv nodejs bird2
APT       := DEBIAN_FRONTEND=noninteractive apt-get
PYTEST    ?= $(PY) -m pytest
# Debian's python3 makes a venv only with python3-venv (ensurepip) installed
MKVENV     = python3 -m venv $(1) 2>/dev/null || { rm -rf $(1); echo ">> installing python3-venv"; \
             $(APT) update -qq && $(APT) install -y -qq python3-venv >/dev/null && python3 -m venv $(1); }

.PHONY: deps apt venv test test-kernel unit faults fuzz soak demo demo-mesh bench bench-deps bench-wake bench-mesh bench-kernel ipk luci-screenshot feed-src install clean

# apt first: the venv needs python3-venv on a fresh Debian 12
deps: apt venv

apt:
	@missing=""; for t in wg wireguard-go ip ping busybox shellcheck depmod qemu-system-x86_64 file node bird; do \
		command -v $$t >/dev/null || missing=1; done; \
	if [ -n "$$missing" ]; then \
		echo ">> installing $(APT_PKGS)"; \
		$(APT) update -qq && $(APT) install -y -qq $(APT_PKGS) >/dev/null; \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: setup.py
	$(call MKVENV,$(VENV))
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# OpenWrt 24.10 ships python3-pyroute2 0.7.9: the suite (whose cross-checks use pyroute2's
# decoders; the daemon does not import it) runs on it too
VENV079   ?= .venv-pyroute2-079
$(VENV079)/.installed: setup.py
	$(call MKVENV,$(VENV079))
	$(VENV079)/bin/python -m pip install -q --upgrade pip
	$(VENV079)/bin/python -m pip install -q pyroute2==0.7.9 structlog pyyaml pytest hypothesis
	$(VENV079)/bin/python -m pip install -q --no-deps -e .
	touch $@

# the whole suite: with pyroute2 0.9 (the venv), with pyroute2 0.7.9, and kernel WireGuard in a VM.
# The fault suite (short counts) and the fuzzing run once, in the first: neither touches pyroute2
test: deps $(VENV079)/.installed
	$(PYTEST) -v -rs tests
	$(VENV079)/bin/python -m pytest -q -rs -p no:cacheprovider -m "not faults and not fuzz" tests
	$(MAKE) --no-print-directory test-kernel

# the fault suite with its full counts (README: What it survives); about an hour on 2 cores.
# The torn generic netlink dumps need kernel WireGuard: the VM, with its full count too
faults: deps
	WGAGENT_FAULTS=full $(PYTEST) -v -rs tests/test_faults.py
	WGAGENT_FAULTS=full python3 tests/vm/run_vm.py tests/test_faults_kernel.py

# the parsers fuzzed ten times longer than in `make test` (20,000 examples each, ~20 minutes)
fuzz: deps
	WGAGENT_FUZZ_EXAMPLES=$${WGAGENT_FUZZ_EXAMPLES:-20000} $(PYTEST) -v -rs tests/test_fuzz.py

# 30 minutes of 1,000 flapping peers; writes bench/SOAK.md and bench/SOAK.json (not in CI)
soak: deps
	$(PY) bench/soak.py

# kernel WireGuard: Debian's kernel under qemu, this checkout's tests inside (tests/vm)
# exit 77: qemu cannot run here at all; a skip, except where WGAGENT_REQUIRE_INTEGRATION=1 (CI)
test-kernel: deps
	python3 tests/vm/run_vm.py; rc=$$?; \
	if [ $$rc -eq 77 ] && [ "$${WGAGENT_REQUIRE_INTEGRATION:-}" != 1 ]; then echo "kernel tests skipped (see above)"; rc=0; fi; \
	exit $$rc

unit: venv
	$(PYTEST) -q tests -m "not root"

demo: deps
	$(PY) demo/s1_roaming.py

# three sites, BIRD 2 (Babel) carrying the phone between them (README "Many sites")
demo-mesh: deps
	$(PY) demo/mesh_roaming.py

# what only the benchmarks need, beside deps: iperf3 (the packet socket's cost to forwarding)
bench-deps: deps
	@command -v iperf3 >/dev/null || { echo ">> installing iperf3"; \
		$(APT) update -qq && $(APT) install -y -qq iperf3 >/dev/null; }

# convergence, scale and footprint against hand-written baselines; writes bench/RESULTS.md
bench: bench-deps
	$(PY) bench/run.py

# the handshake wake-up's sections alone (detection, CPU per hour at scale, forwarding);
# writes bench/RESULTS-wake.md (make bench runs them too, into bench/RESULTS.md)
bench-wake: bench-deps
	$(PY) bench/run.py --wake

# the many-sites section alone (hand-off between three routers with BIRD, BIRD's churn);
# writes bench/RESULTS-mesh.md (make bench runs it too, into bench/RESULTS.md)
bench-mesh: deps
	$(PY) bench/run.py --mesh

# the sections that apply to kernel WireGuard, inside the test VM; writes bench/RESULTS-kernel.md
bench-kernel: deps
	python3 tests/vm/run_vm.py --bench

# wgagent_<version>-r<release>_all.ipk in dist/, built without the OpenWrt SDK
ipk: venv
	$(PY) tools/build_ipk.py dist

# Status > wgagent rendered in headless Chromium (LuCI stand-in, recorded S1 answer) into
# the README's picture; only this target needs chromium. tests/luci/record_status.py
# (root, namespaces) re-records the answer.
luci-screenshot:
	@command -v chromium >/dev/null || { echo ">> installing chromium"; \
		$(APT) update -qq && $(APT) install -y -qq --no-install-recommends chromium >/dev/null; }
	python3 tests/luci/screenshot.py docs/luci-status.png

# make openwrt-package/wgagent self-contained, to drop into an SDK feed
feed-src:
	rm -rf openwrt-package/wgagent/src
	mkdir -p openwrt-package/wgagent/src/init.d
	cp -r wgagent setup.py pyproject.toml LICENSE examples openwrt-package/wgagent/src/
	cp init.d/wgagent openwrt-package/wgagent/src/init.d/
	find openwrt-package/wgagent/src -name __pycache__ -prune -exec rm -rf {} +

# plain Linux: the package in its own venv, the command on PATH, a systemd unit
PREFIX    ?= /usr/local
APPDIR    ?= /opt/wgagent
install:
	$(call MKVENV,$(DESTDIR)$(APPDIR))
	$(DESTDIR)$(APPDIR)/bin/pip install -q .
	@# staged into DESTDIR (a package build): the venv's scripts must name where it will live
	[ -z "$(DESTDIR)" ] || grep -rlI --null '$(DESTDIR)$(APPDIR)' $(DESTDIR)$(APPDIR)/bin | \
		xargs -0 -r sed -i 's#$(DESTDIR)$(APPDIR)#$(APPDIR)#g'
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)/etc/systemd/system $(DESTDIR)/etc/wgagent
	ln -sf $(APPDIR)/bin/wgagent $(DESTDIR)$(PREFIX)/bin/wgagent
	sed 's#/usr/local/bin/wgagent#$(PREFIX)/bin/wgagent#' systemd/wgagent.service \
		> $(DESTDIR)/etc/systemd/system/wgagent.service
	[ -e $(DESTDIR)/etc/wgagent/config.yaml ] || install -m 600 systemd/config.yaml $(DESTDIR)/etc/wgagent/config.yaml
	install -d $(DESTDIR)$(PREFIX)/share/wgagent
	install -m 644 examples/bird-babel.conf examples/bird-ospf.conf $(DESTDIR)$(PREFIX)/share/wgagent/
	@echo "installed; now: systemctl daemon-reload && systemctl enable --now wgagent"

clean:
	rm -rf $(VENV) $(VENV079) .cache build dist *.egg-info openwrt-package/wgagent/src

# Set-up and the two jobs of the README: `make study` (the default study) and `make test`.
VENV := .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Headless rendering (EGL/OSMesa, Vulkan) for the simulators; see shared/SIMULATORS.md.
APT_PACKAGES := libegl1 libegl-mesa0 libgl1-mesa-dri libgl1 libgles2 libosmesa6 libglu1-mesa \
	xvfb xauth libvulkan1 mesa-vulkan-drivers

.PHONY: setup system-packages study test test-slow bench
setup: system-packages $(VENV)/.installed

system-packages:
	@missing=$$(for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing system packages:" $$missing; \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dmc,dev]'
	touch $@

study: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

test: setup
	$(BIN)/python -m pytest -q

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

bench: setup
	$(BIN)/python benchmarks/collect.py
	$(BIN)/python benchmarks/encode.py
	$(BIN)/python benchmarks/cache_payoff.py

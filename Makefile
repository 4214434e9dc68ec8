# Set-up and the two jobs of the README: `make study` (the default study) and `make test`.
VENV := .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Headless rendering (EGL/OSMesa, Vulkan) for the simulators; see shared/SIMULATORS.md.
APT_PACKAGES := libegl1 libegl-mesa0 libgl1-mesa-dri libgl1 libgles2 libosmesa6 libglu1-mesa \
	xvfb xauth libvulkan1 mesa-vulkan-drivers libvulkan-dev gcc libfontconfig1
# CPU Vulkan for ManiSkill/SAPIEN: Debian 12's lavapipe (Mesa 22.3) finds no usable device, Mesa 25's
# from bookworm-backports works. Unpacked into the venv, never installed into the system; the
# ManiSkill envs select it per process (VK_ICD_FILENAMES) when no CUDA GPU is visible.
LAVAPIPE := $(VENV)/lavapipe
DEBIAN_MIRROR ?= http://deb.debian.org/debian

.PHONY: setup system-packages lavapipe maniskill2-env study test test-slow bench
setup: system-packages $(VENV)/.installed lavapipe maniskill2-env

system-packages:
	@missing=$$(for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing system packages:" $$missing; \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

lavapipe: $(LAVAPIPE)/lvp_icd.json

# Its libraries (libLLVM-15, libdrm, libxcb...) are Debian 12's own, installed with the system
# packages; ldd checks that. apt reads a private sources list and state in a temporary folder.
$(LAVAPIPE)/lvp_icd.json: | system-packages
	@set -e; \
	if ! grep -q '^VERSION_CODENAME=bookworm' /etc/os-release 2>/dev/null; then \
		echo "lavapipe: not Debian 12 (bookworm); the system's Vulkan driver is used"; exit 0; fi; \
	work=$$(mktemp -d); trap 'rm -rf "$$work"' EXIT; \
	mkdir -p "$$work/lists/partial" "$$work/cache/archives/partial" "$$work/parts" "$$work/debs"; \
	echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $(DEBIAN_MIRROR) bookworm-backports main" \
		> "$$work/sources.list"; \
	apt="-o Dir::Etc::SourceList=$$work/sources.list -o Dir::Etc::SourceParts=$$work/parts \
		-o Dir::State::Lists=$$work/lists -o Dir::Cache=$$work/cache -o APT::Sandbox::User=$$(id -un)"; \
	echo "lavapipe: downloading mesa-vulkan-drivers from bookworm-backports"; \
	apt-get $$apt update -qq; \
	(cd "$$work/debs" && apt-get $$apt download -qq mesa-vulkan-drivers); \
	rm -rf $(LAVAPIPE) $(LAVAPIPE).partial; mkdir -p $(LAVAPIPE).partial; \
	dpkg-deb -x "$$work"/debs/mesa-vulkan-drivers_*.deb $(LAVAPIPE).partial; \
	mv $(LAVAPIPE).partial $(LAVAPIPE); \
	driver=$$(realpath $(LAVAPIPE)/usr/lib/*/libvulkan_lvp.so); \
	if ldd "$$driver" | grep 'not found'; then echo "lavapipe: missing libraries (above)"; exit 1; fi; \
	python3 -c 'import json, sys; icd = json.load(open(sys.argv[1])); icd["ICD"]["library_path"] = sys.argv[2]; \
		json.dump(icd, open(sys.argv[3], "w"), indent=4)' \
		$(LAVAPIPE)/usr/share/vulkan/icd.d/lvp_icd*.json "$$driver" $@.tmp; \
	mv $@.tmp $@; \
	echo "lavapipe: $$(dpkg-deb -f "$$work"/debs/mesa-vulkan-drivers_*.deb Version) in $(LAVAPIPE)"

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dmc,miniworld,maniskill,dev]'
	touch $@

# ManiSkill 2 (mani-skill2 0.5.3, the paper's version) needs numpy < 2 and sapien 2: its own
# virtualenv, where pipeline/envs/maniskill2_worker.py serves its envs to pvr-pipe. mani-skill2 is
# installed without its numpy<1.24 pin (it runs on 1.26.4, see shared/SIMULATORS.md) and with only
# what its cube tasks import: no torch, no asset downloads. opencv-python 4.12 needs numpy 2.
MS2_VENV := $(VENV)/maniskill2
MS2_PACKAGES := numpy==1.26.4 sapien==2.2.2 gymnasium==0.29.1 'opencv-python<4.12' scipy h5py tqdm \
	transforms3d trimesh rtree imageio
MS2_LAYER := $(MS2_VENV)/vulkan_layer
MS2_LAYER_SOURCE := pipeline/envs/vulkan_layer

maniskill2-env: lavapipe $(MS2_VENV)/.installed $(MS2_LAYER)/VkLayer_PVRPIPE_drop_external_semaphore_fd.json

$(MS2_VENV)/.installed:
	python3 -m venv $(MS2_VENV)
	$(MS2_VENV)/bin/pip install -q --upgrade pip
	$(MS2_VENV)/bin/pip install -q $(MS2_PACKAGES)
	$(MS2_VENV)/bin/pip install -q --no-deps mani-skill2==0.5.3
	touch $@

# The Vulkan layer that lets sapien 2 render with lavapipe (see its source); the manifest comes last.
$(MS2_LAYER)/VkLayer_PVRPIPE_drop_external_semaphore_fd.json: $(MS2_LAYER_SOURCE)/drop_external_semaphore_fd.c \
		$(MS2_LAYER_SOURCE)/VkLayer_PVRPIPE_drop_external_semaphore_fd.json | system-packages
	mkdir -p $(MS2_LAYER)
	gcc -std=c11 -O2 -Wall -Wextra -shared -fPIC -fvisibility=hidden \
		-o $(MS2_LAYER)/libVkLayer_PVRPIPE_drop_external_semaphore_fd.so $<
	cp $(MS2_LAYER_SOURCE)/VkLayer_PVRPIPE_drop_external_semaphore_fd.json $@

# The default study's stages as Dask tasks, two at a time on a 2-core machine (README: the study
# on many machines); `dvc repro` runs the same stages one at a time and leaves the same dvc.lock.
study: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pvr-pipe study params.yaml

# One pytest worker per core, each test file on one worker (files share module-scoped fixtures).
TEST_WORKERS ?= $(shell nproc)
test: setup
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

bench: setup
	$(BIN)/python benchmarks/collect.py
	$(BIN)/python benchmarks/encode.py
	$(BIN)/python benchmarks/cache_payoff.py
	$(BIN)/python benchmarks/finetune.py

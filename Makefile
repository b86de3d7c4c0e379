# rtaas: robust transfer learning as a service.
#   make          build build/librtengine.a, build/librtengine.so and build/rtaas
#   make deps     install the Debian packages the build and the tests need (idempotent)
#   make test     deps + build + every test suite; ends with "N passed, N failed"
#   make fuzz     libFuzzer targets, FUZZ_SECONDS each (default 60)
#   make bench    rtaas against PyTorch on the same work; prints the ratio table
#   make bench-gpu  the same on a CUDA GPU (ResNet-50: features, PGD-20, LwF); skipped without one
#   make demo     the main job on the embedded defaults
#   make clean

CC      ?= gcc
ARCH    ?= -march=x86-64-v3
OPT     ?= -O2
CFLAGS  ?= $(OPT) $(ARCH) -g
# Flags the code needs, kept apart from CFLAGS so that `make CFLAGS=...` (the sanitizer
# build) changes optimisation and instrumentation only.
XCFLAGS := -std=gnu11 -Wall -Wextra -Werror -fopenmp -fPIC -Iengine
# OpenBLAS built on OpenMP shares the thread pool of oneDNN and of our kernels; the pthread
# build runs its own threads, which fight OpenMP's spinning workers for the cores.
OPENBLAS_DIR ?= /usr/lib/x86_64-linux-gnu/openblas-openmp
LDLIBS  := -ldnnl -L$(OPENBLAS_DIR) -Wl,-rpath,$(OPENBLAS_DIR) -lopenblas -ljansson -larchive -ljpeg -lpng -lz -lm -lpthread
B       := build

ENGINE_SRC := $(wildcard engine/*.c engine/cpu/*.c)
ENGINE_OBJ := $(ENGINE_SRC:%.c=$(B)/%.o)

# The CUDA backend is compiled when nvcc and cuDNN are found; nothing needs a GPU to build.
CUDA_HOME ?= /usr/local/cuda
NVCC      ?= $(shell command -v nvcc 2>/dev/null || { test -x $(CUDA_HOME)/bin/nvcc && echo $(CUDA_HOME)/bin/nvcc; })
HAVE_CUDNN := $(shell test -f $(CUDA_HOME)/include/cudnn.h -o -f /usr/include/cudnn.h && echo 1)
ifneq ($(and $(NVCC),$(HAVE_CUDNN),$(wildcard engine/cuda/*.cu)),)
  CUDA_SRC  := $(wildcard engine/cuda/*.cu)
  CUDA_OBJ  := $(CUDA_SRC:%.cu=$(B)/%.o)
  XCFLAGS   += -DRTAAS_HAVE_CUDA -I$(CUDA_HOME)/include
  NVCCFLAGS ?= -O2 -std=c++17 -Xcompiler -fPIC,-Wall,-Werror -Iengine -DRTAAS_HAVE_CUDA \
               -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90
  LDLIBS    += -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcudnn -lcublasLt -lcublas -lcudart -lstdc++
endif

# The service: server/ (plumbing) and api/ (handlers), with the migrations and the dashboard
# compiled in (tools/embed), on libmicrohttpd, libpq and OpenSSL.
SERVER_SRC := $(wildcard server/*.c api/*.c)
SERVER_OBJ := $(SERVER_SRC:%.c=$(B)/%.o) $(B)/embed.o
SERVER_CFLAGS := -Iserver -Iapi -I$(shell pg_config --includedir 2>/dev/null || echo /usr/include/postgresql)
SERVER_LIBS := -lmicrohttpd -lpq -lcrypto
EMBED_FILES := $(sort $(wildcard migrations/*.sql)) -- $(sort $(wildcard static/*))

.PHONY: all deps test demo clean
all: $(B)/librtengine.a $(B)/librtengine.so $(B)/rtaas

$(B)/%.o: %.c $(wildcard engine/*.h engine/cpu/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(XCFLAGS) -c $< -o $@

$(B)/%.o: %.cu $(wildcard engine/*.h engine/cuda/*.h)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -c $< -o $@

$(B)/librtengine.a: $(ENGINE_OBJ) $(CUDA_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(B)/librtengine.so: $(ENGINE_OBJ) $(CUDA_OBJ)
	$(CC) $(CFLAGS) -shared -fopenmp -o $@ $^ $(LDLIBS)

$(SERVER_SRC:%.c=$(B)/%.o): $(B)/%.o: %.c $(wildcard engine/*.h server/*.h api/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(XCFLAGS) $(SERVER_CFLAGS) -c $< -o $@

$(B)/embed.c: tools/embed $(filter-out --,$(EMBED_FILES))
	@mkdir -p $(B)
	tools/embed $@ $(EMBED_FILES)

$(B)/embed.o: $(B)/embed.c server/embed.h
	$(CC) $(CFLAGS) $(XCFLAGS) -Iserver -c $< -o $@

$(B)/rtaas: $(SERVER_OBJ) $(B)/librtengine.a
	$(CC) $(CFLAGS) $(XCFLAGS) -o $@ $(SERVER_OBJ) $(B)/librtengine.a $(LDLIBS) $(SERVER_LIBS)

# Rules for the files these targets build live beside them: tests/tests.mk (test binaries,
# fuzzers), bench/bench.mk (bench_rtaas), engine/cuda/cuda.mk (CUDA objects, the emulation).
include tests/tests.mk
include bench/bench.mk
include engine/cuda/cuda.mk

.PHONY: fuzz bench bench-gpu bench-service test-gpu cuda-check cuda-emu

# libFuzzer targets, FUZZ_SECONDS each, corpora in build/fuzz, seeds in tests/fuzz/seeds
fuzz: $(FUZZ_BIN)
	@for f in $(FUZZ_BIN); do \
	  n=$$(basename $$f); mkdir -p $(B)/fuzz/corpus-$$n; \
	  echo "fuzz: $$n for $(FUZZ_SECONDS) s"; \
	  $$f -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 $(B)/fuzz/corpus-$$n tests/fuzz/seeds/$$n || exit 1; \
	done

bench: all $(B)/bench/bench_rtaas
	@bench/run

bench-gpu: $(B)/bench/bench_rtaas
	@bench/gpu

bench-service: $(B)/rtaas
	@bench/service

# the CUDA backend on the CPU emulation (no nvcc, no GPU): the suite make test runs
cuda-emu:
	@tests/suites/cuda_emu.sh

ifneq ($(CUDA_OBJ),)
cuda-check: $(CUDA_OBJ)
	@echo "cuda-check: $(words $(CUDA_OBJ)) CUDA objects compiled"

# on a GPU: CPU against CUDA on every op and whole models, then memcheck on the small cases
test-gpu: $(B)/tests/test_cuda
	$(B)/tests/test_cuda
	@if [ -n "$(COMPUTE_SANITIZER)" ]; then \
	  echo "$(COMPUTE_SANITIZER) --tool memcheck $(B)/tests/test_cuda --small"; \
	  $(COMPUTE_SANITIZER) --tool memcheck --error-exitcode 1 $(B)/tests/test_cuda --small; \
	else \
	  echo "test-gpu: no compute-sanitizer under $(CUDA_HOME)/bin: memcheck run skipped"; \
	fi
else
cuda-check:
	@echo "cuda-check: this build has no CUDA backend (it needs nvcc and cuDNN under CUDA_HOME=$(CUDA_HOME))"; exit 1
test-gpu:
	@echo "test-gpu: this build has no CUDA backend (it needs nvcc and cuDNN under CUDA_HOME=$(CUDA_HOME))"; exit 1
endif

deps:
	@tools/deps

test: deps all
	@tests/run

demo: deps all
	@tools/demo

clean:
	rm -rf $(B)

# Test binaries: one per tests/unit/test_*.c, linked against the engine library.
# tests/run runs them all (and the parity and fuzz suites) and prints the closing line.

TEST_SRC  := $(wildcard tests/unit/test_*.c)
TEST_BIN  := $(TEST_SRC:tests/unit/%.c=$(B)/tests/%)
TEST_LIBS := $(B)/librtengine.a $(LDLIBS)

$(B)/tests/%: tests/unit/%.c tests/t.h $(B)/librtengine.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(XCFLAGS) -Itests -o $@ $< $(TEST_LIBS)

.PHONY: tests
tests: $(TEST_BIN)
all: tests

# libFuzzer targets (clang): one per tests/fuzz/fuzz_*.c, built with ASan and UBSan
# against the engine sources they name in FUZZ_DEPS_<name>.
FUZZ_CC      ?= clang
FUZZ_SECONDS ?= 60
FUZZ_SRC     := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_BIN     := $(FUZZ_SRC:tests/fuzz/%.c=$(B)/fuzz/%)
FUZZ_FLAGS   := -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -Iengine -std=gnu11
FUZZ_ENGINE  := engine/status.c engine/tensor.c engine/fileio.c
FUZZ_DEPS_fuzz_safetensors := engine/safetensors.c
FUZZ_DEPS_fuzz_png_decode  := engine/png.c
FUZZ_DEPS_fuzz_pickle      := engine/pt_pickle.c
FUZZ_DEPS_fuzz_ptzip       := engine/pt_zip.c engine/pt_pickle.c engine/ptload.c engine/pt_layout.c engine/safetensors.c
# Libraries a target links beyond jansson and libm, in FUZZ_LIBS_<name>.
FUZZ_LIBS_fuzz_png_decode  := -lpng -lz
FUZZ_LIBS_fuzz_ptzip       := -lz
# The dataset readers: every fuzz_data_* target links all of engine/data*.c.
FUZZ_DATA_SRC  := $(wildcard engine/data*.c) engine/png.c
FUZZ_DATA_LIBS := -larchive -ljpeg -lpng -lz
$(foreach t,idx cifar npy npz archive image detect,$(eval FUZZ_DEPS_fuzz_data_$(t) := $$(FUZZ_DATA_SRC))$(eval FUZZ_LIBS_fuzz_data_$(t) := $$(FUZZ_DATA_LIBS)))

$(B)/fuzz/%: tests/fuzz/%.c $(FUZZ_ENGINE) $(wildcard engine/*.c engine/*.h tests/fuzz/*.h)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_FLAGS) -o $@ $< $(FUZZ_ENGINE) $(FUZZ_DEPS_$*) $(FUZZ_LIBS_$*) -ljansson -lm

.PHONY: fuzz-build
fuzz-build: $(FUZZ_BIN)

# PyTorch parity checker: tests/suites/parity.sh runs it on the references that
# tests/parity/gen_ref.py writes. Not named test_*, so tests/run never calls it bare.
$(B)/tests/parity_check: tests/parity/parity.c tests/t.h $(B)/librtengine.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(XCFLAGS) -Itests -o $@ $< $(TEST_LIBS)
tests: $(B)/tests/parity_check

# Attack parity checker: tests/suites/attack_parity.sh runs it on what
# tests/parity/gen_attack_ref.py writes. Not named test_*, so tests/run never calls it bare.
$(B)/tests/attack_check: tests/parity/attack_check.c tests/t.h $(B)/librtengine.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(XCFLAGS) -Itests -o $@ $< $(TEST_LIBS)
tests: $(B)/tests/attack_check

# PyTorch checkpoint import checker: tests/suites/pt_import.sh runs it on the checkpoints that
# tests/parity/gen_pt.py writes. Not named test_*, so tests/run never calls it bare.
$(B)/tests/pt_check: tests/parity/pt_check.c tests/t.h $(B)/librtengine.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(XCFLAGS) -Itests -o $@ $< $(TEST_LIBS)
tests: $(B)/tests/pt_check

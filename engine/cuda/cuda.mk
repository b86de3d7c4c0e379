# The CUDA backend's files: its objects, and its sources built against the CPU emulation. The
# targets (in the Makefile):
#   make cuda-check  compile the CUDA objects only: needs nvcc and cuDNN, not a GPU
#   make test-gpu    build and run build/tests/test_cuda (CPU against CUDA on every op and on
#                    whole models), then once more under compute-sanitizer memcheck with
#                    --small (small cases only) when $(CUDA_HOME)/bin has it
#   make cuda-emu    no nvcc, no GPU: compile the CUDA sources as C++ against the CPU emulation
#                    in engine/cuda/emu and run tests/suites/cuda_emu.sh: test_cuda on it (a check
#                    of the backend's logic, indexing, layouts and cuDNN/cuBLAS calls; not of real
#                    GPU numerics or speed), and test_job's out-of-memory retry

COMPUTE_SANITIZER ?= $(firstword $(wildcard $(CUDA_HOME)/bin/compute-sanitizer) \
                       $(shell command -v compute-sanitizer 2>/dev/null))

# cuda-check, test-gpu and cuda-emu themselves are in the Makefile.

# ctx.c and info.c compile differently with and without RTAAS_HAVE_CUDA; a stamp named after
# the current choice makes them rebuild when it changes (else a stale info.o still defines
# eng_cuda_device_count next to the CUDA backend's and the link fails).
CUDA_STAMP := $(B)/.cuda-$(if $(CUDA_OBJ),on,off)
$(B)/engine/ctx.o $(B)/engine/info.o: $(CUDA_STAMP)
$(CUDA_STAMP):
	@mkdir -p $(B)
	@rm -f $(B)/.cuda-on $(B)/.cuda-off
	@touch $@

# ---- the CPU emulation ----
# Kernels that synchronise their block (__syncthreads, block_sum/block_max): the emulation runs
# their threads as coroutines. One missing here stops the run with a message naming EMU_SYNC.
EMU_SYNC := k_partial_x1 k_partial_xn k_xent k_sum_rows k_row_absmax k_linf_dist k_feature_distance
EMU_DIR  := engine/cuda/emu
EMU_B    := $(B)/emu
EMU_CXX  ?= g++
EMU_SED  := -e 's/\<($(subst $(eval) ,|,$(strip $(EMU_SYNC))))<<<(.*)>>>\(/cuemu_launch(true, \1, cuemu_cfg(\2), /' \
            -e 's/\<([A-Za-z_][A-Za-z0-9_]*)<<<(.*)>>>\(/cuemu_launch(false, \1, cuemu_cfg(\2), /' \
            -e 's/\<NULL\>/nullptr/g'
EMU_CU   := $(wildcard engine/cuda/*.cu)
EMU_OBJ  := $(EMU_CU:engine/cuda/%.cu=$(EMU_B)/cuda/%.o) $(EMU_B)/cuemu.o $(ENGINE_SRC:%.c=$(EMU_B)/%.o)
EMU_HDR  := $(wildcard engine/*.h engine/cuda/*.h $(EMU_DIR)/*.h $(EMU_DIR)/include/*.h)

$(EMU_B)/cuda/%.cpp: engine/cuda/%.cu engine/cuda/cuda.mk
	@mkdir -p $(dir $@)
	sed -E $(EMU_SED) $< > $@

$(EMU_B)/cuda/%.o: $(EMU_B)/cuda/%.cpp $(EMU_HDR)
	$(EMU_CXX) -std=c++17 -O1 -g -Wall -Wno-unused-function -fPIC -I$(EMU_DIR)/include -include $(EMU_DIR)/cuemu.h \
	  -Iengine/cuda -Iengine -DRTAAS_HAVE_CUDA -c $< -o $@

$(EMU_B)/cuemu.o: $(EMU_DIR)/cuemu.cpp $(EMU_HDR)
	@mkdir -p $(dir $@)
	$(EMU_CXX) -std=c++17 -O1 -g -Wall -fPIC -U_FORTIFY_SOURCE -I$(EMU_DIR)/include -c $< -o $@

$(EMU_B)/%.o: %.c $(EMU_HDR)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(XCFLAGS) -DRTAAS_HAVE_CUDA -c $< -o $@

$(EMU_B)/test_cuda: tests/unit/test_cuda.c tests/t.h $(EMU_OBJ)
	$(CC) $(CFLAGS) $(XCFLAGS) -DRTAAS_HAVE_CUDA -Itests -o $@ $< $(EMU_OBJ) $(LDLIBS) -lstdc++

# The job test against the emulation: an emulated card too small for the batches asked runs the
# job-level out-of-memory retry (tests/unit/test_job.c, job_oom_retry).
$(EMU_B)/test_job: tests/unit/test_job.c tests/t.h $(EMU_OBJ)
	$(CC) $(CFLAGS) $(XCFLAGS) -DRTAAS_HAVE_CUDA -DRTAAS_CUDA_EMU -Itests -o $@ $< $(EMU_OBJ) $(LDLIBS) -lstdc++

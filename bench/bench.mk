# `make bench`: rtaas against PyTorch on the same work (bench/run prints the ratio table and
# writes it to build/bench/latest.txt). The benchmark binary links like the tests.
#
# A subset of the cases, comma- or space-separated; the conv table runs only when named:
#   BENCH_CASES=resnet20_pgd20_b128,smallcnn_lwf_epoch make bench
#   BENCH_CASES=resnet50_fwd_b8,conv_table BENCH_GEMM=0 bench/run
# Cases: resnet50_fwd_b8 resnet50_pgd_step_b8 resnet20_train_b128 smallcnn_train_b128 (one step
# each); resnet20_pgd20_b128 resnet50_pgd20_b8 (a whole PGD-20 attack per step);
# smallcnn_linear_pipeline (features of 10000 images, then 10 epochs of a linear head);
# smallcnn_lwf_epoch (one Learning-without-Forgetting epoch over 10000 images); conv_table.
# Repeats per case unless BENCH_ITERS/BENCH_WARMUP are set: see the comment in bench/run.

$(B)/bench/bench_rtaas: bench/bench_rtaas.c $(B)/librtengine.a $(wildcard engine/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(XCFLAGS) -o $@ bench/bench_rtaas.c $(B)/librtengine.a $(LDLIBS)

# `make bench-gpu`: rtaas against PyTorch on a CUDA GPU (bench/gpu): ResNet-50 at 224, feature
# extraction (batch 256), PGD-20 (batch 128) and one LwF training step (batch 128), in TF32 and
# BF16, with images/s, the ratio and the share of the measured matmul peak; the table goes to
# build/bench/gpu-latest.txt. Without a GPU it prints "bench-gpu: skipped: no GPU (...)".
#   BENCH_MATHS=tf32 BENCH_CASES=resnet50_pgd20_b128 make bench-gpu
# `make bench-service`: the REST API under wrk, and upload throughput against cp (bench/service).
# The three targets themselves are in the Makefile.

# `make bench`: rtaas against PyTorch on the same work (bench/run prints the ratio table and
# writes it to build/bench/latest.txt). The benchmark binary links like the tests.

$(B)/bench/bench_rtaas: bench/bench_rtaas.c $(B)/librtengine.a $(wildcard engine/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(XCFLAGS) -o $@ bench/bench_rtaas.c $(B)/librtengine.a $(LDLIBS)

bench: all $(B)/bench/bench_rtaas
	@bench/run

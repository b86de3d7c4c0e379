/* What this build can do, for `rtaas info` and the logs. */
#include "backend.h"

#include <dnnl.h>
#include <stdio.h>

#ifndef RTAAS_HAVE_CUDA
int eng_cuda_device_count(void) { return 0; }
#endif

const char *eng_build_info(void)
{
    static char buf[256];
    const dnnl_version_t *v = dnnl_version();
    dnnl_cpu_isa_t isa = dnnl_get_effective_cpu_isa();
    const char *isa_name = (isa & dnnl_cpu_isa_avx512_core) == dnnl_cpu_isa_avx512_core ? "avx512_core"
                           : (isa & dnnl_cpu_isa_avx2) == dnnl_cpu_isa_avx2             ? "avx2"
                                                                                        : "sse41-or-less";
    snprintf(buf, sizeof buf, "engine: cpu (oneDNN %d.%d.%d, isa %s; OpenBLAS)%s", v->major, v->minor, v->patch,
             isa_name,
#ifdef RTAAS_HAVE_CUDA
             ", cuda (cuDNN, cuBLAS)"
#else
             ", no cuda in this build"
#endif
    );
    return buf;
}

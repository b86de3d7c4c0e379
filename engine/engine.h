/* The public face of the rtaas engine: tensors, contexts (CPU or CUDA), operations, models
 * and weight files. Nothing here knows about HTTP or SQL. */
#ifndef ENG_ENGINE_H
#define ENG_ENGINE_H

#define RTAAS_VERSION "0.1.0"

#include "status.h"
#include "tensor.h"
#include "rng.h"
#include "ctx.h"
#include "ops.h"
#include "model.h"
#include "attack.h"
#include "eval.h"
#include "train.h"
#include "job.h"
#include "data.h"
#include "safetensors.h"
#include "weights.h"
#include "ptload.h"
#include "ptimport.h"
#include "gradmap.h"
#include "png.h"

#endif

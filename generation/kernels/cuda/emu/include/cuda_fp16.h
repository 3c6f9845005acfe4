/* The CUDA emulation stands in for <cuda_fp16.h> (see emu.h). */
#include "emu.h"

/* The CUDA emulation stands in for <cuda_bf16.h> (see emu.h). */
#include "emu.h"

/* The CUDA emulation stands in for <cublas_v2.h> (see emu.h). */
#include "emu.h"

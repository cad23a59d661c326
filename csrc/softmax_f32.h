/* The float32 instance of softmax_impl.h, for softmax.c (the kernels) and softmax_half.c (the
 * inline pieces the half kernels share with them): one definition, so that the two files cannot
 * instantiate it differently and the half results stay the float32 kernels' bits. */
#define T float
#define SFX f32
#define EXP nmx_exp_f32
#define LANES 16
#define VT nmx_vf32
#define VI nmx_vi32
#define VH nmx_vf32h
#define VIH nmx_vi32h
#include "softmax_impl.h"
#undef T
#undef SFX
#undef EXP
#undef LANES
#undef VT
#undef VI
#undef VH
#undef VIH

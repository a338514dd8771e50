/* Arithmetic peaks of this CPU, measured: fp32 FMA, the two AVX2 int8 multiply-add sequences and
 * hwcomp's AVX2 int8 conv step, and where the CPU has them AVX-512 fp32 FMA (zmm), AVX-512 VNNI
 * vpdpbusd (zmm) and AMX tdpbusd. Ops count a multiply-add as 2 everywhere.
 * Each loop but the conv step keeps independent accumulators in registers (no memory traffic); an
 * empty asm statement marks the inputs as changed every iteration so the compiler cannot hoist the
 * work. The conv step reads its operands from L1, as a kernel does.
 * Built and run by bench/peak.py (gcc -O2 -mavx2 -mfma -fopenmp); the AVX-512 loops are compiled
 * with per-function target attributes and run only where __builtin_cpu_supports says so. */
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

#define KEEP6(a) __asm__ volatile("" : "+x"(a##0), "+x"(a##1), "+x"(a##2), "+x"(a##3), "+x"(a##4), "+x"(a##5))

/* 10 chains x 8 lanes x 2 flops per iteration */
static float fma_loop(long n) {
  __m256 b = _mm256_set1_ps(1.0000001f), c = _mm256_set1_ps(1e-7f);
  __m256 a0 = _mm256_set1_ps(0), a1 = _mm256_set1_ps(1), a2 = _mm256_set1_ps(2), a3 = _mm256_set1_ps(3),
         a4 = _mm256_set1_ps(4), a5 = _mm256_set1_ps(5), a6 = _mm256_set1_ps(6), a7 = _mm256_set1_ps(7),
         a8 = _mm256_set1_ps(8), a9 = _mm256_set1_ps(9);
  for (long k = 0; k < n; k++) {
    a0 = _mm256_fmadd_ps(a0, b, c); a1 = _mm256_fmadd_ps(a1, b, c); a2 = _mm256_fmadd_ps(a2, b, c);
    a3 = _mm256_fmadd_ps(a3, b, c); a4 = _mm256_fmadd_ps(a4, b, c); a5 = _mm256_fmadd_ps(a5, b, c);
    a6 = _mm256_fmadd_ps(a6, b, c); a7 = _mm256_fmadd_ps(a7, b, c); a8 = _mm256_fmadd_ps(a8, b, c);
    a9 = _mm256_fmadd_ps(a9, b, c);
  }
  __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                           _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(_mm256_add_ps(a6, a7), _mm256_add_ps(a8, a9))));
  float o[8];
  _mm256_storeu_ps(o, s);
  return o[0];
}

/* s16 x s16 -> s32 (vpmaddwd) + vpaddd: 16 MACs per step, 12 steps over 6 chains (with one step per
 * chain the loop measured 25 % slower: not enough independent multiplies in flight) */
static int madd_loop(long n) {
  __m256i b = _mm256_set1_epi16(-2), one = _mm256_set1_epi16(3);
  __m256i a0 = _mm256_set1_epi16(1), a1 = _mm256_set1_epi16(2), a2 = _mm256_set1_epi16(3),
          a3 = _mm256_set1_epi16(4), a4 = _mm256_set1_epi16(5), a5 = _mm256_set1_epi16(6);
  __m256i c0 = _mm256_setzero_si256(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0;
  for (long k = 0; k < n; k++) {
    KEEP6(a);
    c0 = _mm256_add_epi32(c0, _mm256_madd_epi16(a0, b)); c1 = _mm256_add_epi32(c1, _mm256_madd_epi16(a1, b));
    c2 = _mm256_add_epi32(c2, _mm256_madd_epi16(a2, b)); c3 = _mm256_add_epi32(c3, _mm256_madd_epi16(a3, b));
    c4 = _mm256_add_epi32(c4, _mm256_madd_epi16(a4, b)); c5 = _mm256_add_epi32(c5, _mm256_madd_epi16(a5, b));
    c0 = _mm256_add_epi32(c0, _mm256_madd_epi16(a0, one)); c1 = _mm256_add_epi32(c1, _mm256_madd_epi16(a1, one));
    c2 = _mm256_add_epi32(c2, _mm256_madd_epi16(a2, one)); c3 = _mm256_add_epi32(c3, _mm256_madd_epi16(a3, one));
    c4 = _mm256_add_epi32(c4, _mm256_madd_epi16(a4, one)); c5 = _mm256_add_epi32(c5, _mm256_madd_epi16(a5, one));
  }
  __m256i s = _mm256_add_epi32(_mm256_add_epi32(_mm256_add_epi32(c0, c1), _mm256_add_epi32(c2, c3)),
                               _mm256_add_epi32(c4, c5));
  int o[8];
  _mm256_storeu_si256((__m256i *)o, s);
  return o[0];
}

/* u8 x s8 -> s16 (vpmaddubsw) -> s32 (vpmaddwd by ones) + vpaddd: 32 MACs per step, 6 chains */
static int maddubs_loop(long n) {
  __m256i b = _mm256_set1_epi8(-2), one = _mm256_set1_epi16(1);
  __m256i a0 = _mm256_set1_epi8(1), a1 = _mm256_set1_epi8(2), a2 = _mm256_set1_epi8(3),
          a3 = _mm256_set1_epi8(4), a4 = _mm256_set1_epi8(5), a5 = _mm256_set1_epi8(6);
  __m256i c0 = _mm256_setzero_si256(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0;
#define STEP(a, c) c = _mm256_add_epi32(c, _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), one));
  for (long k = 0; k < n; k++) {
    KEEP6(a);
    STEP(a0, c0) STEP(a1, c1) STEP(a2, c2) STEP(a3, c3) STEP(a4, c4) STEP(a5, c5)
  }
  __m256i s = _mm256_add_epi32(_mm256_add_epi32(_mm256_add_epi32(c0, c1), _mm256_add_epi32(c2, c3)),
                               _mm256_add_epi32(c4, c5));
  int o[8];
  _mm256_storeu_si256((__m256i *)o, s);
  return o[0];
}

/* hwcomp's AVX2 int8 conv step (schedules/x86/int8.py, hwcomp_x86_avx2_u8s7s32_8x2x4_sat) as the
 * kernels issue it: per output pixel two 4-byte activation broadcasts; per 8 outputs x 8 bytes two
 * vpmaddubsw on weights read from L1, vpaddsw, one vpmaddwd by ones, vpaddd. A tile of 5 pixels x
 * 2 vectors (the register tile the 3x3 convs of ResNet's 14-wide rows take): 640 MACs per
 * iteration. Unlike the register-only loops above it reads its operands, as a kernel does
 * (gcc folds some weight loads into vpmaddubsw memory operands: close to, not exactly, the kernel's
 * code). 2026-12-06, Zen 4: 1.9x the maddubs loop's rate per op. */
static int conv_sat_loop(long n, const unsigned char *act, const signed char *w) {
  __m256i one = _mm256_set1_epi16(1);
  __m256i c00 = _mm256_set1_epi32(1), c01 = _mm256_set1_epi32(2), c10 = _mm256_set1_epi32(3),
          c11 = _mm256_set1_epi32(4), c20 = _mm256_set1_epi32(5), c21 = _mm256_set1_epi32(6),
          c30 = _mm256_set1_epi32(7), c31 = _mm256_set1_epi32(8), c40 = _mm256_set1_epi32(9),
          c41 = _mm256_set1_epi32(10);
  for (long k = 0; k < n; k++) {
    const signed char *wk = w + (k & 63) * 128; /* 8 KB of weights, 64 steps: stays in L1 */
    const unsigned char *ak = act + (k & 63) * 8;
    __m256i w00 = _mm256_load_si256((const __m256i *)wk), w01 = _mm256_load_si256((const __m256i *)(wk + 32));
    __m256i w10 = _mm256_load_si256((const __m256i *)(wk + 64)), w11 = _mm256_load_si256((const __m256i *)(wk + 96));
#define PIX(p, ca, cb)                                                                                        \
  {                                                                                                           \
    int b0, b1; /* memcpy: reading bytes as an int through a cast would break strict aliasing */             \
    memcpy(&b0, ak + (p) * 512, 4);                                                                           \
    memcpy(&b1, ak + (p) * 512 + 4, 4);                                                                       \
    __m256i a0 = _mm256_set1_epi32(b0), a1 = _mm256_set1_epi32(b1);                                           \
    ca = _mm256_add_epi32(ca, _mm256_madd_epi16(_mm256_adds_epi16(_mm256_maddubs_epi16(a0, w00),              \
                                                                  _mm256_maddubs_epi16(a1, w01)), one));      \
    cb = _mm256_add_epi32(cb, _mm256_madd_epi16(_mm256_adds_epi16(_mm256_maddubs_epi16(a0, w10),              \
                                                                  _mm256_maddubs_epi16(a1, w11)), one));      \
  }
    PIX(0, c00, c01) PIX(1, c10, c11) PIX(2, c20, c21) PIX(3, c30, c31) PIX(4, c40, c41)
#undef PIX
  }
  __m256i s = _mm256_add_epi32(_mm256_add_epi32(_mm256_add_epi32(c00, c01), _mm256_add_epi32(c10, c11)),
                               _mm256_add_epi32(_mm256_add_epi32(c20, c21),
                                                _mm256_add_epi32(_mm256_add_epi32(c30, c31), _mm256_add_epi32(c40, c41))));
  int o[8];
  _mm256_storeu_si256((__m256i *)o, s);
  return o[0];
}

/* AVX-512: 10 chains x 16 lanes x 2 flops per iteration */
__attribute__((target("avx512f"))) static float fma512_loop(long n) {
  __m512 b = _mm512_set1_ps(1.0000001f), c = _mm512_set1_ps(1e-7f);
  __m512 a0 = _mm512_set1_ps(0), a1 = _mm512_set1_ps(1), a2 = _mm512_set1_ps(2), a3 = _mm512_set1_ps(3),
         a4 = _mm512_set1_ps(4), a5 = _mm512_set1_ps(5), a6 = _mm512_set1_ps(6), a7 = _mm512_set1_ps(7),
         a8 = _mm512_set1_ps(8), a9 = _mm512_set1_ps(9);
  for (long k = 0; k < n; k++) {
    a0 = _mm512_fmadd_ps(a0, b, c); a1 = _mm512_fmadd_ps(a1, b, c); a2 = _mm512_fmadd_ps(a2, b, c);
    a3 = _mm512_fmadd_ps(a3, b, c); a4 = _mm512_fmadd_ps(a4, b, c); a5 = _mm512_fmadd_ps(a5, b, c);
    a6 = _mm512_fmadd_ps(a6, b, c); a7 = _mm512_fmadd_ps(a7, b, c); a8 = _mm512_fmadd_ps(a8, b, c);
    a9 = _mm512_fmadd_ps(a9, b, c);
  }
  __m512 s = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)),
                           _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(_mm512_add_ps(a6, a7), _mm512_add_ps(a8, a9))));
  return _mm512_reduce_add_ps(s);
}

/* AVX-512 VNNI: u8 x s8 -> s32 (vpdpbusd, 64 MACs = 128 ops per instruction), 10 independent chains */
__attribute__((target("avx512f,avx512vnni"))) static int vnni_loop(long n) {
  __m512i a = _mm512_set1_epi8(1), b = _mm512_set1_epi8(-2);
  /* distinct starting values: ten chains from one zero are one value, and the compiler computed it
   * once (one vpdpbusd per iteration credited as ten: the 1671/2342 GOP/s of 2026-12-05) */
  __m512i c0 = _mm512_set1_epi32(0), c1 = _mm512_set1_epi32(1), c2 = _mm512_set1_epi32(2),
          c3 = _mm512_set1_epi32(3), c4 = _mm512_set1_epi32(4), c5 = _mm512_set1_epi32(5),
          c6 = _mm512_set1_epi32(6), c7 = _mm512_set1_epi32(7), c8 = _mm512_set1_epi32(8),
          c9 = _mm512_set1_epi32(9);
  for (long k = 0; k < n; k++) {
    __asm__ volatile("" : "+v"(a), "+v"(b));
    c0 = _mm512_dpbusd_epi32(c0, a, b); c1 = _mm512_dpbusd_epi32(c1, a, b); c2 = _mm512_dpbusd_epi32(c2, a, b);
    c3 = _mm512_dpbusd_epi32(c3, a, b); c4 = _mm512_dpbusd_epi32(c4, a, b); c5 = _mm512_dpbusd_epi32(c5, a, b);
    c6 = _mm512_dpbusd_epi32(c6, a, b); c7 = _mm512_dpbusd_epi32(c7, a, b); c8 = _mm512_dpbusd_epi32(c8, a, b);
    c9 = _mm512_dpbusd_epi32(c9, a, b);
  }
  __m512i s = _mm512_add_epi32(_mm512_add_epi32(_mm512_add_epi32(c0, c1), _mm512_add_epi32(c2, c3)),
                               _mm512_add_epi32(_mm512_add_epi32(c4, c5), _mm512_add_epi32(_mm512_add_epi32(c6, c7),
                                                                                           _mm512_add_epi32(c8, c9))));
  return _mm512_reduce_add_epi32(s);
}

/* AMX int8: tdpbusd on 4 independent 16x16 int32 accumulator tiles from two 16-row A tiles of
 * `colsb` bytes and two B tiles (colsb/4 rows x 64 bytes): 16*16*colsb MACs per instruction. colsb 64
 * is the unit's peak; 16 is what hwcomp's NCHW16c conv issues (one 16-channel block per step). Each
 * thread loads its tile configuration; the process asked Linux for tile data before (main). */
struct tilecfg { unsigned char palette, start, reserved[14]; unsigned short colsb[16]; unsigned char rows[16]; };
__attribute__((target("amx-tile,amx-int8"))) static int amx_loop(long n, int colsb) {
  static __thread unsigned char buf[2048] __attribute__((aligned(64)));
  struct tilecfg cfg = {0};
  cfg.palette = 1;
  for (int t = 0; t < 4; t++) { cfg.rows[t] = 16; cfg.colsb[t] = 64; }
  for (int t = 4; t < 6; t++) { cfg.rows[t] = 16; cfg.colsb[t] = colsb; }
  for (int t = 6; t < 8; t++) { cfg.rows[t] = colsb / 4; cfg.colsb[t] = 64; }
  _tile_loadconfig(&cfg);
  _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
  _tile_loadd(4, buf, 64); _tile_loadd(5, buf + 1024, 64); _tile_loadd(6, buf, 64); _tile_loadd(7, buf + 1024, 64);
  for (long k = 0; k < n; k++) {
    _tile_dpbusd(0, 4, 6); _tile_dpbusd(1, 4, 7); _tile_dpbusd(2, 5, 6); _tile_dpbusd(3, 5, 7);
  }
  int out[256];
  _tile_stored(0, out, 64);
  _tile_release();
  return out[0];
}

int main(int argc, char **argv) {
  long n = argc > 1 ? atol(argv[1]) : 50000000L;
  int th = omp_get_max_threads();
  volatile double sink = 0;
  double t0 = now();
#pragma omp parallel reduction(+ : sink)
  sink += fma_loop(n);
  double t1 = now();
#pragma omp parallel reduction(+ : sink)
  sink += madd_loop(n);
  double t2 = now();
#pragma omp parallel reduction(+ : sink)
  sink += maddubs_loop(n);
  double t3 = now();
  /* operand buffers, read-only and shared by the threads (64-byte aligned, as the kernels' packed
   * weights are) */
  static __attribute__((aligned(64))) signed char wbuf[64 * 128];
  static __attribute__((aligned(64))) unsigned char abuf[64 * 8 + 5 * 512];
  for (int i = 0; i < (int)sizeof wbuf; i++) wbuf[i] = (signed char)((i * 7) % 128 - 64);
  for (int i = 0; i < (int)sizeof abuf; i++) abuf[i] = (unsigned char)(i * 13);
  double t3a = now();
#pragma omp parallel reduction(+ : sink)
  sink += conv_sat_loop(n / 5, abuf, wbuf);
  double t3b = now();
  double conv_sat = th * (n / 5) * 640.0 * 2 / (t3b - t3a) / 1e9;
  double fma512 = -1, vnni = -1; /* -1: this CPU lacks the instructions */
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) {
#pragma omp parallel reduction(+ : sink)
    sink += fma512_loop(n);
    fma512 = th * n * 10.0 * 32 / (now() - t3b) / 1e9;
  }
  double t4 = now();
  if (__builtin_cpu_supports("avx512vnni")) {
#pragma omp parallel reduction(+ : sink)
    sink += vnni_loop(n);
    vnni = th * n * 10.0 * 128 / (now() - t4) / 1e9; /* 2 ops per multiply-add, as every other loop */
  }
  double amx64 = -1, amx16 = -1;
  /* arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA): fails where the CPU or kernel has no AMX */
  if (syscall(SYS_arch_prctl, 0x1023, 18) == 0) {
    long na = n / 16; /* a tile instruction takes ~16 cycles */
    double t5 = now();
#pragma omp parallel reduction(+ : sink)
    sink += amx_loop(na, 64);
    double t6 = now();
#pragma omp parallel reduction(+ : sink)
    sink += amx_loop(na, 16);
    amx64 = th * na * 4.0 * 16 * 16 * 64 * 2 / (t6 - t5) / 1e9;
    amx16 = th * na * 4.0 * 16 * 16 * 16 * 2 / (now() - t6) / 1e9;
  }
  printf("{\"threads\": %d, \"fp32_fma256_gflops\": %.2f, \"int8_vpmaddwd_gops\": %.2f, \"int8_vpmaddubsw_gops\": %.2f, "
         "\"fp32_fma512_gflops\": %.2f, \"int8_vnni_gops\": %.2f, \"int8_amx_gops\": %.2f, "
         "\"int8_amx_k16_gops\": %.2f, \"int8_avx2_conv_gops\": %.2f}\n",
         th, th * n * 10.0 * 16 / (t1 - t0) / 1e9, th * n * 12.0 * 32 / (t2 - t1) / 1e9,
         th * n * 6.0 * 64 / (t3 - t2) / 1e9, fma512, vnni, amx64, amx16, conv_sat);
  return sink == 12345.678;
}

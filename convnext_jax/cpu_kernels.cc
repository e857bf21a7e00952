// ConvNeXt's depthwise convolution and channels-last LayerNorm for XLA:CPU, as XLA FFI custom calls
// (compiled on first use by core_jax/native_kernels.py; convnext_jax/layers.py holds the XLA paths that
// compute the same functions).
//
// Why these exist: XLA:CPU runs grouped convolutions ~13x slower than PyTorch, and the shifted
// multiply-add formulation that replaces them still sweeps memory once per tap in the kernel gradient;
// its LayerNorm backward goes through reduce fusions that materialize broadcast statistics (4x
// PyTorch's time). These loops keep accumulators in registers and read each input once per row.
// Float32, channels last (C contiguous).
//
// Depthwise 2-D convolution (stride 1, zero padding):
//   dwconv_forward(x[N,H,W,C], k[KH,KW,C]; ph, pw) -> y[N,H,W,C]
//       y[n,h,w,c] = sum_{i,j} x[n, h+i-ph, w+j-pw, c] * k[i,j,c]   (zero outside x)
//     Serves the input gradient too: dx = dwconv_forward(g, k flipped, KH-1-ph, KW-1-pw).
//   dwconv_kernel_grad(x[N,H,W,C], g[N,H,W,C]; ph, pw) -> dk[KH,KW,C]   (KH, KW: from dk's shape)
//       dk[i,j,c] = sum_{n,h,w} x[n, h+i-ph, w+j-pw, c] * g[n,h,w,c]
//
// LayerNorm over the last axis of x viewed as rows [R, C] (two-pass statistics, as PyTorch):
//   layer_norm_forward(x, scale[C], bias[C]; eps) -> y[R,C], mean[R], rstd[R]
//       y = (x - mean) * rstd * scale + bias,  rstd = 1 / sqrt(mean((x - mean)^2) + eps)
//   layer_norm_backward(x, scale, mean, rstd, g) -> dx[R,C], dscale[C], dbias[C]
//       xhat = (x - mean) * rstd, gs = g * scale,
//       dx = rstd * (gs - mean(gs) - xhat * mean(gs * xhat)),  dscale = sum_rows g * xhat,  dbias = sum_rows g
//
// Deterministic: per-output sums run in a fixed order; sums over rows (kernel gradient, dscale, dbias)
// add fixed blocks of rows, then the blocks in order, whatever the number of threads.
#include <algorithm>
#include <cmath>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

typedef float v8 __attribute__((vector_size(32)));

inline v8 load8(const float* p) { v8 v; std::memcpy(&v, p, sizeof(v)); return v; }
inline void store8(float* p, v8 v) { std::memcpy(p, &v, sizeof(v)); }
inline v8 splat(float a) { return a - (v8){0, 0, 0, 0, 0, 0, 0, 0}; }  // (a, a, ..., a)

// Runs body(item) for item in [0, items) on the calling thread and the XLA intra-op pool.
// Work is claimed from a shared counter, so the caller never waits on a task that has not started
// (no deadlock when the pool is busy); tasks that start late find nothing left and return.
template <typename Body>
void parallel_for(ffi::ThreadPool& pool, int64_t items, Body body) {
  struct State {
    std::atomic<int64_t> next{0}, done{0};
    int64_t items;
  };
  auto state = std::make_shared<State>();
  state->items = items;
  auto body_ptr = std::make_shared<Body>(body);  // tasks may outlive this call (then do nothing)
  auto run = [state, body_ptr]() {
    for (int64_t i; (i = state->next.fetch_add(1)) < state->items;) {
      (*body_ptr)(i);
      state->done.fetch_add(1, std::memory_order_release);
    }
  };
  int64_t helpers = std::min<int64_t>(pool.num_threads(), items) - 1;
  for (int64_t t = 0; t < helpers; ++t) {
    auto task = run;
    pool.Schedule(std::move(task));
  }
  run();
  while (state->done.load(std::memory_order_acquire) < items) {
#if defined(__x86_64__)
    __builtin_ia32_pause();
#endif
  }
}

// out[0:per] = the sum over rows [0, rows) that block_fn(r0, r1, acc) adds into a zeroed acc[0:per] for
// a block of rows. The rows go in at most 16 fixed blocks, summed in block order: the result does not
// depend on the thread count (reproducible runs). No rows: zeros.
template <typename BlockFn>
void sum_over_row_blocks(ffi::ThreadPool& pool, int64_t rows, int64_t per, float* out, BlockFn block_fn) {
  const int64_t blocks = std::min<int64_t>(rows, 16);
  std::vector<float> partial(blocks * per, 0.f);
  float* pp = partial.data();
  parallel_for(pool, blocks, [=](int64_t b) { block_fn(rows * b / blocks, rows * (b + 1) / blocks, pp + b * per); });
  std::fill(out, out + per, 0.f);
  for (int64_t b = 0; b < blocks; ++b)
    for (int64_t e = 0; e < per; ++e) out[e] += pp[b * per + e];
}

struct Dims {
  int64_t n, h, w, c;
};

Dims dims_of(ffi::Buffer<ffi::F32>& b) {
  auto d = b.dimensions();
  return {d[0], d[1], d[2], d[3]};
}

// One output row y[n, h, :, :]. Interior columns (every tap inside the row) go four at a time: each
// kernel tap is loaded once for four outputs, so the loop is bound by FMAs rather than loads.
void forward_row(const float* x, const float* k, float* y, Dims d, int64_t kh, int64_t kw, int64_t ph,
                 int64_t pw, int64_t n, int64_t h) {
  const int64_t C = d.c, W = d.w;
  const int64_t i_lo = std::max<int64_t>(0, ph - h), i_hi = std::min<int64_t>(kh, d.h + ph - h);
  float* out = y + ((n * d.h + h) * W) * C;
  // x[n, h+i-ph, w+j-pw, c] = x[base + (i*W + w+j)*C + c]. `base` itself may be negative (the top and
  // left borders); pointers are only formed at taps inside the image, where the sum is not.
  const int64_t base = ((n * d.h + h - ph) * W - pw) * C;
  auto one_column = [&](int64_t w) {
    const int64_t j_lo = std::max<int64_t>(0, pw - w), j_hi = std::min<int64_t>(kw, W + pw - w);
    int64_t c = 0;
    for (; c + 8 <= C; c += 8) {
      v8 acc = splat(0.f);
      for (int64_t i = i_lo; i < i_hi; ++i) {
        const float* xrow = x + (base + (i * W + w + j_lo) * C + c);  // first tap inside the row
        const float* krow = k + (i * kw + j_lo) * C + c;
        for (int64_t j = 0; j < j_hi - j_lo; ++j) acc += load8(xrow + j * C) * load8(krow + j * C);
      }
      store8(out + w * C + c, acc);
    }
    for (; c < C; ++c) {
      float acc = 0.f;
      for (int64_t i = i_lo; i < i_hi; ++i)
        for (int64_t j = j_lo; j < j_hi; ++j) acc += x[base + (i * W + w + j) * C + c] * k[(i * kw + j) * C + c];
      out[w * C + c] = acc;
    }
  };
  // Interior: w - pw >= 0 and w + kw - 1 - pw < W.
  const int64_t w_in_lo = std::min<int64_t>(pw, W), w_in_hi = std::max<int64_t>(w_in_lo, W - (kw - 1 - pw));
  int64_t w = 0;
  for (; w < w_in_lo; ++w) one_column(w);
  if (C % 8 == 0) {
    for (; w + 4 <= w_in_hi; w += 4) {
      for (int64_t c = 0; c < C; c += 8) {
        v8 a0 = splat(0.f), a1 = a0, a2 = a0, a3 = a0;
        for (int64_t i = i_lo; i < i_hi; ++i) {
          const float* xrow = x + (base + (i * W + w) * C + c);  // interior: every tap inside the row
          const float* krow = k + (i * kw) * C + c;
          for (int64_t j = 0; j < kw; ++j) {
            const v8 kv = load8(krow + j * C);
            const float* xs = xrow + j * C;
            a0 += load8(xs) * kv;
            a1 += load8(xs + C) * kv;
            a2 += load8(xs + 2 * C) * kv;
            a3 += load8(xs + 3 * C) * kv;
          }
        }
        store8(out + w * C + c, a0);
        store8(out + (w + 1) * C + c, a1);
        store8(out + (w + 2) * C + c, a2);
        store8(out + (w + 3) * C + c, a3);
      }
    }
  }
  for (; w < W; ++w) one_column(w);
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> k,
                   ffi::ResultBuffer<ffi::F32> y, int64_t ph, int64_t pw) {
  Dims d = dims_of(x);
  auto kd = k.dimensions();
  if (kd.size() != 3 || kd[2] != d.c) return ffi::Error::InvalidArgument("dwconv_forward: kernel shape");
  const int64_t kh = kd[0], kw = kd[1];
  const float* xp = x.typed_data();
  const float* kp = k.typed_data();
  float* yp = y->typed_data();
  parallel_for(pool, d.n * d.h, [=](int64_t item) {
    forward_row(xp, kp, yp, d, kh, kw, ph, pw, item / d.h, item % d.h);
  });
  return ffi::Error::Success();
}

// Adds sum over the rows [r0, r1) (row = n * H + h) of x-shifted * g into acc[KH, KW, C].
void kernel_grad_rows(const float* x, const float* g, float* acc, Dims d, int64_t kh, int64_t kw,
                      int64_t ph, int64_t pw, int64_t r0, int64_t r1) {
  const int64_t C = d.c, W = d.w;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t n = r / d.h, h = r % d.h;
    const float* grow = g + ((n * d.h + h) * W) * C;
    const int64_t i_lo = std::max<int64_t>(0, ph - h), i_hi = std::min<int64_t>(kh, d.h + ph - h);
    for (int64_t i = i_lo; i < i_hi; ++i) {
      const float* xrow = x + ((n * d.h + h + i - ph) * W) * C;
      for (int64_t j = 0; j < kw; ++j) {
        const int64_t w_lo = std::max<int64_t>(0, pw - j), w_hi = std::min<int64_t>(W, W + pw - j);
        float* a = acc + (i * kw + j) * C;
        int64_t c = 0;
        for (; c + 16 <= C; c += 16) {
          v8 s0 = splat(0.f), s1 = s0;
          for (int64_t w = w_lo; w < w_hi; ++w) {
            const float* xs = xrow + (w + j - pw) * C + c;
            const float* gs = grow + w * C + c;
            s0 += load8(xs) * load8(gs);
            s1 += load8(xs + 8) * load8(gs + 8);
          }
          store8(a + c, load8(a + c) + s0);
          store8(a + c + 8, load8(a + c + 8) + s1);
        }
        for (; c < C; ++c) {
          float s = 0.f;
          for (int64_t w = w_lo; w < w_hi; ++w) s += xrow[(w + j - pw) * C + c] * grow[w * C + c];
          a[c] += s;
        }
      }
    }
  }
}

ffi::Error KernelGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> g,
                      ffi::ResultBuffer<ffi::F32> dk, int64_t ph, int64_t pw) {
  Dims d = dims_of(x);
  auto kd = dk->dimensions();
  const int64_t kh = kd[0], kw = kd[1];
  const float* xp = x.typed_data();
  const float* gp = g.typed_data();
  sum_over_row_blocks(pool, d.n * d.h, kh * kw * d.c, dk->typed_data(), [=](int64_t r0, int64_t r1, float* acc) {
    kernel_grad_rows(xp, gp, acc, d, kh, kw, ph, pw, r0, r1);
  });
  return ffi::Error::Success();
}

// ------------------------------------------------------------------------------------- LayerNorm

// Row-wise helpers over C floats; 8-wide partial sums, then a fixed-order horizontal sum.
inline float hsum(v8 v) {
  float s = 0.f;
  for (int l = 0; l < 8; ++l) s += v[l];
  return s;
}

ffi::Error LnForward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> scale,
                     ffi::Buffer<ffi::F32> bias, ffi::ResultBuffer<ffi::F32> y, ffi::ResultBuffer<ffi::F32> mean,
                     ffi::ResultBuffer<ffi::F32> rstd, float eps) {
  const int64_t C = scale.element_count(), R = x.element_count() / C;
  const float *xp = x.typed_data(), *sp = scale.typed_data(), *bp = bias.typed_data();
  float *yp = y->typed_data(), *mp = mean->typed_data(), *rp = rstd->typed_data();
  const int64_t rows_per_item = std::max<int64_t>(1, 16384 / C);
  parallel_for(pool, (R + rows_per_item - 1) / rows_per_item, [=](int64_t item) {
    for (int64_t r = item * rows_per_item; r < std::min(R, (item + 1) * rows_per_item); ++r) {
      const float* xr = xp + r * C;
      float* yr = yp + r * C;
      int64_t c = 0;
      v8 acc = splat(0.f);
      for (; c + 8 <= C; c += 8) acc += load8(xr + c);
      float s = hsum(acc);
      for (; c < C; ++c) s += xr[c];
      const float m = s / static_cast<float>(C);
      const v8 mv = splat(m);
      acc = splat(0.f);
      for (c = 0; c + 8 <= C; c += 8) {
        const v8 d = load8(xr + c) - mv;
        acc += d * d;
      }
      float ss = hsum(acc);
      for (; c < C; ++c) ss += (xr[c] - m) * (xr[c] - m);
      const float rs = 1.0f / std::sqrt(ss / static_cast<float>(C) + eps);
      const v8 rv = splat(rs);
      for (c = 0; c + 8 <= C; c += 8) store8(yr + c, (load8(xr + c) - mv) * rv * load8(sp + c) + load8(bp + c));
      for (; c < C; ++c) yr[c] = (xr[c] - m) * rs * sp[c] + bp[c];
      mp[r] = m;
      rp[r] = rs;
    }
  });
  return ffi::Error::Success();
}

ffi::Error LnBackward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> scale,
                      ffi::Buffer<ffi::F32> mean, ffi::Buffer<ffi::F32> rstd, ffi::Buffer<ffi::F32> g,
                      ffi::ResultBuffer<ffi::F32> dx, ffi::ResultBuffer<ffi::F32> dscale,
                      ffi::ResultBuffer<ffi::F32> dbias) {
  const int64_t C = scale.element_count(), R = x.element_count() / C;
  const float *xp = x.typed_data(), *sp = scale.typed_data(), *mp = mean.typed_data(), *rp = rstd.typed_data(),
              *gp = g.typed_data();
  float* dxp = dx->typed_data();
  std::vector<float> sums(2 * C);  // [dscale | dbias]
  sum_over_row_blocks(pool, R, 2 * C, sums.data(), [=](int64_t r0, int64_t r1, float* ds) {
    float* db = ds + C;
    for (int64_t r = r0; r < r1; ++r) {
      const float *xr = xp + r * C, *gr = gp + r * C;
      float* dxr = dxp + r * C;
      const float m = mp[r], rs = rp[r];
      const v8 mv = splat(m), rv = splat(rs);
      v8 a8 = splat(0.f), b8 = a8;
      int64_t c = 0;
      for (; c + 8 <= C; c += 8) {
        const v8 xh = (load8(xr + c) - mv) * rv, gv = load8(gr + c), gs = gv * load8(sp + c);
        a8 += gs;
        b8 += gs * xh;
        store8(ds + c, load8(ds + c) + gv * xh);
        store8(db + c, load8(db + c) + gv);
      }
      float a = hsum(a8), bb = hsum(b8);
      for (; c < C; ++c) {
        const float xh = (xr[c] - m) * rs, gs = gr[c] * sp[c];
        a += gs;
        bb += gs * xh;
        ds[c] += gr[c] * xh;
        db[c] += gr[c];
      }
      a /= static_cast<float>(C);
      bb /= static_cast<float>(C);
      const v8 av = splat(a), bv = splat(bb);
      for (c = 0; c + 8 <= C; c += 8) {
        const v8 xh = (load8(xr + c) - mv) * rv, gs = load8(gr + c) * load8(sp + c);
        store8(dxr + c, rv * (gs - av - xh * bv));
      }
      for (; c < C; ++c) {
        const float xh = (xr[c] - m) * rs, gs = gr[c] * sp[c];
        dxr[c] = rs * (gs - a - xh * bb);
      }
    }
  });
  std::copy(sums.begin(), sums.begin() + C, dscale->typed_data());
  std::copy(sums.begin() + C, sums.end(), dbias->typed_data());
  return ffi::Error::Success();
}

// The two depthwise handlers take the same operands: (x or g, k or g) -> one result; padding attributes.
auto conv_binding() {
  return ffi::Ffi::Bind()
      .Ctx<ffi::ThreadPool>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Ret<ffi::Buffer<ffi::F32>>()
      .Attr<int64_t>("ph")
      .Attr<int64_t>("pw");
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(ConvnextDwconvForward, Forward, conv_binding());

XLA_FFI_DEFINE_HANDLER_SYMBOL(ConvnextDwconvKernelGrad, KernelGrad, conv_binding());

XLA_FFI_DEFINE_HANDLER_SYMBOL(ConvnextLayerNormForward, LnForward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("eps"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(ConvnextLayerNormBackward, LnBackward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

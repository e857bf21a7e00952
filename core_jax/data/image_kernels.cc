// Pillow's uint8 resize and affine transform (bilinear and bicubic), equal to Pillow bit for bit and
// several times faster. Called through ctypes by core_jax/data/image_kernels.py.
//
// Why equal bit for bit: timm's training transforms (the reference our parity tests hold us to) call
// Pillow, so these kernels repeat Pillow's arithmetic exactly: the same fixed-point coefficients for
// resize (22 fraction bits, rounded the same way), the same double-precision expressions in the same
// order for the affine filters. The file must be compiled with -ffp-contract=off: a fused
// multiply-add rounds once where Pillow rounds twice. Only the work layout differs:
//   resize: both passes run as "weighted sums of whole rows" over contiguous bytes (vectorizable);
//           the horizontal pass gets that shape by transposing the pixels before and after it;
//           the passes run in Pillow's order (it changes the rounding).
//   affine: one pixel's channels ride the lanes of a 4-double vector, and the source is padded
//           with copies of its edge pixels, which is what Pillow's coordinate clamping amounts to.
// Images are row-major H x W x C uint8, C in {1, 3} (Pillow 'L' and 'RGB'); rows may be strided.

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace {

constexpr int kFilterBilinear = 2;  // Pillow's Resampling enum values
constexpr int kFilterBicubic = 3;
constexpr int kFilterBox = 4;

// ------------------------------------------------------------------------------------ resize

constexpr int kPrecisionBits = 32 - 8 - 2;

double box_weight(double x) { return (x > -0.5 && x <= 0.5) ? 1.0 : 0.0; }

double bilinear_weight(double x) {
  if (x < 0.0) x = -x;
  if (x < 1.0) return 1.0 - x;
  return 0.0;
}

double bicubic_weight(double x) {  // Keys cubic, a = -0.5, written as Pillow evaluates it
  const double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

// For each output index: the first input index, the number of taps and `ksize` fixed-point weights.
struct Taps {
  int ksize = 0;
  std::vector<int> first, count;
  std::vector<int32_t> weight;
};

bool make_taps(int in_size, int out_size, int filter, Taps* taps) {
  double (*weight_fn)(double);
  double filter_support;
  switch (filter) {
    case kFilterBilinear: weight_fn = bilinear_weight; filter_support = 1.0; break;
    case kFilterBicubic: weight_fn = bicubic_weight; filter_support = 2.0; break;
    case kFilterBox: weight_fn = box_weight; filter_support = 0.5; break;
    default: return false;
  }
  // Pillow passes the box as floats; the whole-image box (0, in_size) is exact in float.
  const float in0 = 0.0f, in1 = static_cast<float>(in_size);
  double scale = static_cast<double>(in1 - in0) / out_size;
  double filterscale = scale < 1.0 ? 1.0 : scale;
  double support = filter_support * filterscale;
  int ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  taps->ksize = ksize;
  taps->first.assign(out_size, 0);
  taps->count.assign(out_size, 0);
  taps->weight.assign(static_cast<size_t>(out_size) * ksize, 0);
  std::vector<double> w(ksize);
  for (int xx = 0; xx < out_size; ++xx) {
    double center = in0 + (xx + 0.5) * scale;
    double total = 0.0;
    double inv = 1.0 / filterscale;
    int lo = static_cast<int>(center - support + 0.5);
    if (lo < 0) lo = 0;
    int hi = static_cast<int>(center + support + 0.5);
    if (hi > in_size) hi = in_size;
    int n = hi - lo;
    for (int x = 0; x < n; ++x) {
      w[x] = weight_fn((x + lo - center + 0.5) * inv);
      total += w[x];
    }
    int32_t* k = &taps->weight[static_cast<size_t>(xx) * ksize];
    for (int x = 0; x < n; ++x) {
      double v = total != 0.0 ? w[x] / total : w[x];
      k[x] = v < 0 ? static_cast<int>(-0.5 + v * (1 << kPrecisionBits))
                   : static_cast<int>(0.5 + v * (1 << kPrecisionBits));
    }
    taps->first[xx] = lo;
    taps->count[xx] = n < 0 ? 0 : n;
  }
  return true;
}

inline uint8_t clip8(int32_t s) {  // Pillow's table lookup on s >> 22, as a clamp
  int v = s >> kPrecisionBits;
  return static_cast<uint8_t>(v < 0 ? 0 : (v > 255 ? 255 : v));
}

// out row r = clip8(1/2 + sum_t weight[r][t] * in row (first[r] + t)), element-wise over `n` bytes.
// 32 columns at a time, so the sums stay in registers across the taps.
void weighted_rows(const uint8_t* in, ptrdiff_t in_stride, int n, const Taps& taps, int row_shift,
                   uint8_t* out, ptrdiff_t out_stride, int out_rows) {
  constexpr int kCols = 32;
  constexpr int32_t kHalf = 1 << (kPrecisionBits - 1);
  for (int r = 0; r < out_rows; ++r) {
    const int32_t* k = &taps.weight[static_cast<size_t>(r) * taps.ksize];
    const uint8_t* base = in + static_cast<ptrdiff_t>(taps.first[r] - row_shift) * in_stride;
    const int count = taps.count[r];
    uint8_t* o = out + r * out_stride;
    int i = 0;
    for (; i + kCols <= n; i += kCols) {
      int32_t acc[kCols];
      for (int j = 0; j < kCols; ++j) acc[j] = kHalf;
      for (int t = 0; t < count; ++t) {
        const uint8_t* row = base + t * in_stride + i;
        const int32_t kt = k[t];
        for (int j = 0; j < kCols; ++j) acc[j] += static_cast<int32_t>(row[j]) * kt;
      }
      for (int j = 0; j < kCols; ++j) o[i + j] = clip8(acc[j]);
    }
    for (; i < n; ++i) {
      int32_t acc = kHalf;
      for (int t = 0; t < count; ++t) acc += static_cast<int32_t>(base[t * in_stride + i]) * k[t];
      o[i] = clip8(acc);
    }
  }
}

// A view of source pixels: `pixel` bytes apart, `row` apart (either may be negative). The callers
// pass pixel = +-C (packed pixels, e.g. a flipped numpy view) or 4 only for Pillow's own RGBX storage,
// whose spare 4th byte the word-sized reads below may touch.
struct Source {
  const uint8_t* data;
  ptrdiff_t row;
  int pixel;
  const uint8_t* at(int y, int x) const { return data + y * row + static_cast<ptrdiff_t>(x) * pixel; }
};

// dst[x][y * C + c] = src pixel (y, x) channel c, for a rows x cols block; dst rows are written
// contiguously. For C = 3 each pixel moves as one 4-byte word whose spare byte the next pixel
// overwrites; the last pixel of a dst row, and a read that could pass the end of a packed source,
// move byte by byte.
template <int C>
void transpose_pixels(Source src, int rows, int cols, uint8_t* dst) {
  constexpr int kBlock = 16;
  const ptrdiff_t dst_stride = static_cast<ptrdiff_t>(rows) * C;
  for (int x0 = 0; x0 < cols; x0 += kBlock) {
    const int x1 = std::min(cols, x0 + kBlock);
    for (int y0 = 0; y0 < rows; y0 += kBlock) {
      const int y1 = std::min(rows, y0 + kBlock);
      for (int x = x0; x < x1; ++x) {
        uint8_t* d = dst + x * dst_stride;
        const uint8_t* s = src.at(0, x);
        if (C == 3) {
          // The spare byte belongs to the neighbour pixel in memory (x + 1, or x - 1 in a flipped view).
          const bool word_read_ok = src.pixel >= 4 || (src.pixel > 0 ? x + 1 < cols : x > 0);
          const int y_end = std::min(y1, rows - 1);
          int y = y0;
          if (word_read_ok) {
            for (; y < y_end; ++y) {
              uint32_t v;
              std::memcpy(&v, s + y * src.row, 4);
              std::memcpy(d + y * C, &v, 4);
            }
          }
          for (; y < y1; ++y) std::memcpy(d + y * C, s + y * src.row, C);
        } else {
          for (int y = y0; y < y1; ++y) std::memcpy(d + y * C, s + y * src.row, C);
        }
      }
    }
  }
}

// Packs rows x cols pixels of `src` into dst rows of cols * C bytes.
template <int C>
void copy_pixels(Source src, int rows, int cols, uint8_t* dst) {
  for (int y = 0; y < rows; ++y) {
    if (src.pixel == C) {
      std::memcpy(dst + static_cast<ptrdiff_t>(y) * cols * C, src.at(y, 0), static_cast<size_t>(cols) * C);
    } else {
      for (int x = 0; x < cols; ++x) std::memcpy(dst + (static_cast<ptrdiff_t>(y) * cols + x) * C, src.at(y, x), C);
    }
  }
}

// Scratch buffers reused across calls (one set per thread): no page faults or zero-fill per image.
// Buffers that grew past kKeepBytes (a huge image) are released after the call that needed them, so
// many threads do not each keep the largest image they ever saw.
constexpr size_t kKeepBytes = size_t{4} << 20;
thread_local std::vector<uint8_t> scratch_buffers[4];

uint8_t* scratch(int slot, size_t bytes) {
  std::vector<uint8_t>& b = scratch_buffers[slot];
  if (b.size() < bytes + 4) b.resize(bytes + 4);
  return b.data();
}

void release_large_scratch() {
  for (auto& b : scratch_buffers)
    if (b.capacity() > kKeepBytes) std::vector<uint8_t>().swap(b);
}

// The horizontal pass over `rows` rows: transposed, it is a weighted sum of rows too.
template <int C>
void horizontal_pass(Source src, int rows, int in_w, int out_w, const Taps& th, uint8_t* dst) {
  const ptrdiff_t col_stride = static_cast<ptrdiff_t>(rows) * C;
  uint8_t* cols_in = scratch(0, static_cast<size_t>(in_w) * col_stride);
  uint8_t* cols_out = scratch(1, static_cast<size_t>(out_w) * col_stride);
  transpose_pixels<C>(src, rows, in_w, cols_in);
  weighted_rows(cols_in, col_stride, rows * C, th, 0, cols_out, col_stride, out_w);
  transpose_pixels<C>(Source{cols_out, col_stride, C}, out_w, rows, dst);
}

// Which pass Pillow runs first. The order changes the result (the intermediate image is rounded to
// uint8), and it changed in Pillow 13; image_kernels.py finds the installed Pillow's by a probe.
enum PassOrder { kHorizontalFirst = 0, kPillow13 = 1 };

template <int C>
void resize(Source src, int in_h, int in_w, int out_h, int out_w, const Taps& th, const Taps& tv, uint8_t* dst,
            int order) {
  const bool need_h = out_w != in_w;  // Pillow skips a pass that would be the identity
  const bool need_v = out_h != in_h;
  const ptrdiff_t out_stride = static_cast<ptrdiff_t>(out_w) * C;
  // Pillow <= 12 always starts with the horizontal pass; Pillow 13 starts with the vertical one when
  // it shrinks the height by more than twice what the horizontal pass takes off the width (measured
  // against Pillow: tests/core/test_image_kernels.py).
  const bool vertical_first =
      order == kPillow13 && need_v && out_h < in_h && (in_h - out_h) > 2 * (in_w - out_w);
  if (vertical_first) {
    // Row sums run over whole source rows (with Pillow's spare byte when pixels are 4 bytes apart).
    const ptrdiff_t mid_stride = static_cast<ptrdiff_t>(in_w) * src.pixel;
    const bool direct = !need_h && src.pixel == C;
    uint8_t* mid = direct ? dst : scratch(2, static_cast<size_t>(out_h) * mid_stride);
    weighted_rows(src.data, src.row, in_w * src.pixel, tv, 0, mid, mid_stride, out_h);
    const Source m{mid, mid_stride, src.pixel};
    if (need_h) {
      horizontal_pass<C>(m, out_h, in_w, out_w, th, dst);
    } else if (!direct) {
      copy_pixels<C>(m, out_h, out_w, dst);
    }
    return;
  }
  // Horizontal first, over only the rows the vertical pass reads.
  const int first_row = tv.first[0];
  const int rows = tv.first[out_h - 1] + tv.count[out_h - 1] - first_row;
  Source mid{src.at(first_row, 0), src.row, src.pixel};
  if (need_h) {
    uint8_t* buf = need_v ? scratch(2, static_cast<size_t>(rows) * out_stride) : dst;
    horizontal_pass<C>(mid, rows, in_w, out_w, th, buf);
    mid = Source{buf, out_stride, C};
  } else if (mid.pixel != C) {  // vertical only, on packed pixels
    uint8_t* buf = scratch(2, static_cast<size_t>(rows) * out_stride);
    copy_pixels<C>(mid, rows, in_w, buf);
    mid = Source{buf, out_stride, C};
  }
  if (need_v) {
    weighted_rows(mid.data, mid.row, out_w * C, tv, first_row, dst, out_stride, out_h);
  } else if (!need_h) {
    copy_pixels<C>(mid, out_h, out_w, dst);
  }
}

// ------------------------------------------------------------------------------------ affine

typedef double d4 __attribute__((vector_size(32)));
typedef int32_t i4 __attribute__((vector_size(16)));
typedef uint8_t u8x4 __attribute__((vector_size(4)));

constexpr int kPad = 2;  // bicubic reads 1 pixel before and 2 after the base pixel

// The conversions by intrinsics where there are any: GCC splits the generic ones in halves.
inline i4 widen(const uint8_t* p) {  // one RGBX pixel -> 4 int32 lanes
  int32_t word;
  std::memcpy(&word, p, 4);
#if defined(__AVX2__)
  return reinterpret_cast<i4>(_mm_cvtepu8_epi32(_mm_cvtsi32_si128(word)));
#else
  u8x4 v;
  std::memcpy(&v, &word, 4);
  return __builtin_convertvector(v, i4);
#endif
}

inline d4 to_d4(i4 v) {
#if defined(__AVX2__)
  return reinterpret_cast<d4>(_mm256_cvtepi32_pd(reinterpret_cast<__m128i>(v)));
#else
  return __builtin_convertvector(v, d4);
#endif
}

inline i4 truncate_to_i4(d4 v) {
#if defined(__AVX2__)
  return reinterpret_cast<i4>(_mm256_cvttpd_epi32(reinterpret_cast<__m256d>(v)));
#else
  return __builtin_convertvector(v, i4);
#endif
}

// Pillow's BICUBIC macro (the a = -1 cubic), term for term. On the source bytes Pillow forms p2..p4
// in int arithmetic, which is exact, so they are formed in int32 lanes before the conversion.
inline d4 cubic_of_bytes(const uint8_t* p, double d) {
  const i4 v1 = widen(p), v2 = widen(p + 4), v3 = widen(p + 8), v4 = widen(p + 12);
  const d4 p1 = to_d4(v2);
  const d4 p2 = to_d4(-v1 + v3);
  const d4 p3 = to_d4(2 * (v1 - v2) + v3 - v4);
  const d4 p4 = to_d4(-v1 + v2 - v3 + v4);
  return p1 + d * (p2 + d * (p3 + d * p4));
}

inline d4 cubic(d4 v1, d4 v2, d4 v3, d4 v4, double d) {  // the same macro on doubles
  d4 p1 = v2;
  d4 p2 = -v1 + v3;
  d4 p3 = 2.0 * (v1 - v2) + v3 - v4;
  d4 p4 = -v1 + v2 - v3 + v4;
  return p1 + d * (p2 + d * (p3 + d * p4));
}

// Pillow's BILINEAR macro: a + (b - a) * d, with b - a in int arithmetic on the source bytes.
inline d4 linear_of_bytes(const uint8_t* p, double d) {
  const i4 a = widen(p), b = widen(p + 4);
  return to_d4(a) + to_d4(b - a) * d;
}

// The source as 4-byte pixels with kPad copies of the edge pixels on every side: Pillow clamps each
// sampled row and column into the image (the rows past the top by XCLIP/YCLIP, the ones past the
// bottom by repeating the last row's value), which is the same as reading such a padded image.
uint8_t* padded_rgbx(Source src, int h, int w, int c) {
  const int pw = w + 2 * kPad, ph = h + 2 * kPad;
  uint8_t* out = scratch(0, static_cast<size_t>(pw) * ph * 4);
  for (int y = 0; y < ph; ++y) {
    const int sy = std::min(std::max(y - kPad, 0), h - 1);
    uint8_t* o = out + static_cast<size_t>(y) * pw * 4;
    for (int x = 0; x < pw; ++x) {
      const uint8_t* p = src.at(sy, std::min(std::max(x - kPad, 0), w - 1));
      for (int ch = 0; ch < 4; ++ch) o[x * 4 + ch] = ch < c ? p[ch] : 0;
    }
  }
  return out;
}

template <int C, int Filter>
void affine(Source src, int h, int w, const double* a, uint8_t* dst, int out_h, int out_w) {
  const uint8_t* pad = padded_rgbx(src, h, w, C);
  const ptrdiff_t ps = static_cast<ptrdiff_t>(w + 2 * kPad) * 4;
  const uint8_t* origin = pad + kPad * ps + kPad * 4;
  const double a0 = a[0], a1 = a[1], a2 = a[2], a3 = a[3], a4 = a[4], a5 = a[5];
  std::vector<int> column(out_w);
  std::vector<ptrdiff_t> offset(out_w);
  std::vector<double> fx(out_w), fy(out_w);
  // One pixel: the 4x4 (bicubic) or 2x2 (bilinear) neighbourhood at `q`, fractions dx, dy.
  auto sample = [&](const uint8_t* q, double dx, double dy) -> i4 {
    d4 v;
    if (Filter == kFilterBicubic) {
      v = cubic(cubic_of_bytes(q, dx), cubic_of_bytes(q + ps, dx), cubic_of_bytes(q + 2 * ps, dx),
                cubic_of_bytes(q + 3 * ps, dx), dy);
      // Pillow: <= 0 -> 0, >= 255 -> 255, else truncate; the same as clamping, then truncating.
      const d4 zero = {0.0, 0.0, 0.0, 0.0}, top = {255.0, 255.0, 255.0, 255.0};
      v = v < zero ? zero : v;
      v = v > top ? top : v;
    } else {
      const d4 r0 = linear_of_bytes(q, dx), r1 = linear_of_bytes(q + ps, dx);
      v = r0 + (r1 - r0) * dy;
    }
    return truncate_to_i4(v);  // as Pillow's (UINT8) cast
  };
  auto store = [](uint8_t* row, int x, i4 v) {
    for (int ch = 0; ch < C; ++ch) row[x * C + ch] = static_cast<uint8_t>(v[ch]);
  };
  const int back = Filter == kFilterBicubic ? 1 : 0;  // neighbourhood starts `back` pixels up-left
  for (int y = 0; y < out_h; ++y) {
    uint8_t* row_out = dst + static_cast<ptrdiff_t>(y) * out_w * C;
    const double yin = y + 0.5;
    // Pillow's a0 * xin + a1 * yin + a2 adds left to right, so the a1 * yin term is the same for the
    // whole row and can be formed once without changing any rounding.
    const double byx = a1 * yin, byy = a4 * yin;
    // Map the row first; pixels outside the source keep the fill (the output starts filled).
    int n = 0;
    auto keep = [&](int x, double xs, double ys) {
      xs -= 0.5;
      ys -= 0.5;
      const double flx = std::floor(xs), fly = std::floor(ys);
      fx[n] = xs - flx;
      fy[n] = ys - fly;
      offset[n] = (static_cast<int>(fly) - back) * ps + (static_cast<int>(flx) - back) * 4;
      column[n++] = x;
    };
    int x = 0;
#if defined(__AVX2__)
    {
      const __m256d va0 = _mm256_set1_pd(a0), va3 = _mm256_set1_pd(a3);
      const __m256d vbx = _mm256_set1_pd(byx), vby = _mm256_set1_pd(byy);
      const __m256d va2 = _mm256_set1_pd(a2), va5 = _mm256_set1_pd(a5);
      const __m256d zero = _mm256_setzero_pd(), vw = _mm256_set1_pd(w), vh = _mm256_set1_pd(h);
      alignas(32) double xs4[4], ys4[4];
      for (; x + 4 <= out_w; x += 4) {
        const __m256d xin = _mm256_add_pd(_mm256_setr_pd(x, x + 1, x + 2, x + 3), _mm256_set1_pd(0.5));
        const __m256d xs = _mm256_add_pd(_mm256_add_pd(_mm256_mul_pd(va0, xin), vbx), va2);
        const __m256d ys = _mm256_add_pd(_mm256_add_pd(_mm256_mul_pd(va3, xin), vby), va5);
        const __m256d inside = _mm256_and_pd(
            _mm256_and_pd(_mm256_cmp_pd(xs, zero, _CMP_GE_OQ), _mm256_cmp_pd(xs, vw, _CMP_LT_OQ)),
            _mm256_and_pd(_mm256_cmp_pd(ys, zero, _CMP_GE_OQ), _mm256_cmp_pd(ys, vh, _CMP_LT_OQ)));
        int mask = _mm256_movemask_pd(inside);
        if (!mask) continue;
        _mm256_store_pd(xs4, xs);
        _mm256_store_pd(ys4, ys);
        for (int j = 0; j < 4; ++j)
          if (mask & (1 << j)) keep(x + j, xs4[j], ys4[j]);
      }
    }
#endif
    for (; x < out_w; ++x) {
      const double xin = x + 0.5;
      const double xs = a0 * xin + byx + a2;
      const double ys = a3 * xin + byy + a5;
      if (!(xs >= 0.0 && xs < w && ys >= 0.0 && ys < h)) continue;  // Pillow's test, for finite xs, ys
      keep(x, xs, ys);
    }
    // Then sample two pixels per step: independent chains the core can overlap.
    int k = 0;
    for (; k + 2 <= n; k += 2) {
      const i4 v0 = sample(origin + offset[k], fx[k], fy[k]);
      const i4 v1 = sample(origin + offset[k + 1], fx[k + 1], fy[k + 1]);
      store(row_out, column[k], v0);
      store(row_out, column[k + 1], v1);
    }
    if (k < n) store(row_out, column[k], sample(origin + offset[k], fx[k], fy[k]));
  }
}

}  // namespace

extern "C" {

// Pillow `Image.resize((out_w, out_h), filter)` of a whole in_h x in_w image with `channels` channels
// whose pixels lie `pixel_stride` bytes apart (channels, or 4 for Pillow's RGBX storage) and rows
// `row_stride` apart; dst is packed out_h x out_w x channels. 0 on success, -1 for an unsupported
// filter or layout (callers then use Pillow). `pass_order`: a PassOrder.
int core_jax_resize_u8(const uint8_t* src, ptrdiff_t row_stride, int pixel_stride, int in_h, int in_w,
                       int channels, uint8_t* dst, int out_h, int out_w, int filter, int pass_order) {
  if (in_h <= 0 || in_w <= 0 || out_h <= 0 || out_w <= 0 || std::abs(pixel_stride) < channels) return -1;
  if (channels != 1 && channels != 3) return -1;
  Taps th, tv;
  if (!make_taps(in_w, out_w, filter, &th) || !make_taps(in_h, out_h, filter, &tv)) return -1;
  Source s{src, row_stride, pixel_stride};
  if (pixel_stride != channels && !(pixel_stride == 4 && channels == 3)) {  // e.g. a flipped view: pack it
    uint8_t* packed = scratch(3, static_cast<size_t>(in_h) * in_w * channels);
    if (channels == 3) copy_pixels<3>(s, in_h, in_w, packed); else copy_pixels<1>(s, in_h, in_w, packed);
    s = Source{packed, static_cast<ptrdiff_t>(in_w) * channels, channels};
  }
  if (channels == 1) resize<1>(s, in_h, in_w, out_h, out_w, th, tv, dst, pass_order);
  else resize<3>(s, in_h, in_w, out_h, out_w, th, tv, dst, pass_order);
  release_large_scratch();
  return 0;
}

// Pillow `Image.transform(size, AFFINE, a, filter, fillcolor=fill)` into dst (out_h x out_w x channels,
// packed); `fill` holds one byte per channel.
int core_jax_affine_u8(const uint8_t* src, ptrdiff_t row_stride, int pixel_stride, int in_h, int in_w,
                       int channels, const double* a, const uint8_t* fill, uint8_t* dst, int out_h, int out_w,
                       int filter) {
  if (in_h <= 0 || in_w <= 0 || out_h < 0 || out_w < 0 || std::abs(pixel_stride) < channels || channels > 4) return -1;
  if (filter != kFilterBicubic && filter != kFilterBilinear) return -1;
  for (int i = 0; i < 6; ++i)
    if (!std::isfinite(a[i])) return -1;  // Pillow's comparisons let NaN coordinates through
  // Pillow starts from an image of the fill color; pixels that map inside the source are overwritten.
  const size_t pixels = static_cast<size_t>(out_h) * out_w;
  for (size_t i = 0; i < pixels; ++i)
    for (int ch = 0; ch < channels; ++ch) dst[i * channels + ch] = fill[ch];
  const Source s{src, row_stride, pixel_stride};
  const bool cubic = filter == kFilterBicubic;
  if (channels == 3) {
    cubic ? affine<3, kFilterBicubic>(s, in_h, in_w, a, dst, out_h, out_w)
          : affine<3, kFilterBilinear>(s, in_h, in_w, a, dst, out_h, out_w);
  } else if (channels == 1) {
    cubic ? affine<1, kFilterBicubic>(s, in_h, in_w, a, dst, out_h, out_w)
          : affine<1, kFilterBilinear>(s, in_h, in_w, a, dst, out_h, out_w);
  } else {
    return -1;
  }
  release_large_scratch();
  return 0;
}

// Horizontal flip of an in_h x in_w image into packed dst (numpy's x[:, ::-1], made contiguous).
int core_jax_flip_lr_u8(const uint8_t* src, ptrdiff_t row_stride, int pixel_stride, int h, int w, int channels,
                        uint8_t* dst) {
  if (h < 0 || w < 0 || channels < 1 || channels > 4) return -1;
  const Source s{src, row_stride, pixel_stride};
  for (int y = 0; y < h; ++y) {
    uint8_t* o = dst + static_cast<ptrdiff_t>(y) * w * channels;
    for (int x = 0; x < w; ++x) {
      const uint8_t* p = s.at(y, w - 1 - x);
      for (int ch = 0; ch < channels; ++ch) o[x * channels + ch] = p[ch];
    }
  }
  return 0;
}

// dst[y][x][c] = table[c * 256 + src pixel (y, x) channel c]: normalization of uint8 images through
// a table the caller fills with exactly what its float arithmetic gives, so results are equal bit
// for bit. dst is packed h x w x channels float32.
int core_jax_lookup_u8_f32(const uint8_t* src, ptrdiff_t row_stride, int pixel_stride, int h, int w,
                           int channels, const float* table, float* dst) {
  if (h < 0 || w < 0 || channels < 1 || channels > 4) return -1;
  const Source s{src, row_stride, pixel_stride};
  for (int y = 0; y < h; ++y) {
    float* o = dst + static_cast<ptrdiff_t>(y) * w * channels;
    if (channels == 3) {
      for (int x = 0; x < w; ++x) {
        const uint8_t* p = s.at(y, x);
        o[3 * x] = table[p[0]];
        o[3 * x + 1] = table[256 + p[1]];
        o[3 * x + 2] = table[512 + p[2]];
      }
    } else {
      for (int x = 0; x < w; ++x) {
        const uint8_t* p = s.at(y, x);
        for (int ch = 0; ch < channels; ++ch) o[x * channels + ch] = table[ch * 256 + p[ch]];
      }
    }
  }
  return 0;
}

}  // extern "C"

// oneDNN 2-D convolutions (forward, input gradient, kernel gradient) as XLA FFI handlers, for
// model.conv_backend = "onednn" (jaxproto/backbones/onednn_conv.py builds and registers them).
// Activations are NHWC and kernels HWIO in float32, as in jaxproto's backbones; oneDNN may keep
// the kernel in a blocked layout, reordered on every call (kernels are small next to the
// activations). Primitives are created once per geometry and cached.
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <tuple>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = memory::format_tag;
using dt = memory::data_type;

namespace {

dnnl::engine& Engine() {
  static dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  return eng;
}

// Shapes: x (N, H, W, C) NHWC, w (KH, KW, C, O) HWIO, y (N, OH, OW, O).
struct Geometry {
  int64_t n, h, w, c, kh, kw, o, oh, ow, sh, sw, ph0, ph1, pw0, pw1;
  auto key() const {
    return std::make_tuple(n, h, w, c, kh, kw, o, oh, ow, sh, sw, ph0, ph1, pw0, pw1);
  }
  bool operator<(const Geometry& g) const { return key() < g.key(); }
  memory::desc src(tag t = tag::nhwc) const { return memory::desc({n, c, h, w}, dt::f32, t); }
  memory::desc wei(tag t = tag::hwio) const { return memory::desc({o, c, kh, kw}, dt::f32, t); }
  memory::desc dst(tag t = tag::nhwc) const { return memory::desc({n, o, oh, ow}, dt::f32, t); }
  memory::dims strides() const { return {sh, sw}; }
  memory::dims pad_l() const { return {ph0, pw0}; }
  memory::dims pad_r() const { return {ph1, pw1}; }
};

dnnl::convolution_forward::primitive_desc FwdPd(const Geometry& g) {
  return dnnl::convolution_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
      g.src(), g.wei(tag::any), g.dst(), g.strides(), g.pad_l(), g.pad_r());
}

struct FwdEntry {
  dnnl::convolution_forward prim;
  memory::desc wei_md;
};
struct BwdDataEntry {
  dnnl::convolution_backward_data prim;
  memory::desc wei_md;
};
struct BwdWeiEntry {
  dnnl::convolution_backward_weights prim;
  memory::desc wei_md;
};

std::mutex cache_mutex;
// One convolution at a time: XLA runs independent thunks on several threads, and two OpenMP
// teams on the same cores spin in oneDNN's barriers against each other (a step with two
// independent backbone passes then stalls for minutes). Each primitive already uses every core.
std::mutex exec_mutex;
std::map<Geometry, FwdEntry> fwd_cache;
std::map<Geometry, BwdDataEntry> bwd_data_cache;
std::map<Geometry, BwdWeiEntry> bwd_wei_cache;

template <typename Map, typename Make>
auto& Lookup(Map& cache, const Geometry& g, Make make) {
  std::lock_guard<std::mutex> lock(cache_mutex);
  auto it = cache.find(g);
  if (it == cache.end()) it = cache.emplace(g, make()).first;
  return it->second;
}

// oneDNN reports failures as exceptions; XLA expects an error status.
template <typename F>
ffi::Error Guarded(F f) {
  try {
    f();
  } catch (const dnnl::error& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("oneDNN convolution: ") + e.what());
  }
  return ffi::Error::Success();
}

// The kernel in HWIO, reordered to the primitive's preferred layout when it differs.
memory KernelIn(const Geometry& g, const memory::desc& want, float* data, dnnl::stream& s) {
  memory plain(g.wei(), Engine(), data);
  if (want == plain.get_desc()) return plain;
  memory blocked(want, Engine());
  dnnl::reorder(plain, blocked).execute(s, plain, blocked);
  return blocked;
}

using Dims = ffi::Span<const int64_t>;

Geometry Make(Dims xd, Dims wd, Dims yd, int64_t sh, int64_t sw, int64_t ph0, int64_t ph1,
              int64_t pw0, int64_t pw1) {
  return Geometry{xd[0], xd[1], xd[2], xd[3], wd[0], wd[1], wd[3], yd[1], yd[2],
                  sh,    sw,    ph0,   ph1,   pw0,   pw1};
}

ffi::Error Forward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                   ffi::ResultBuffer<ffi::F32> y, int64_t sh, int64_t sw, int64_t ph0,
                   int64_t ph1, int64_t pw0, int64_t pw1) {
  return Guarded([&] {
    Geometry g = Make(x.dimensions(), w.dimensions(), y->dimensions(), sh, sw, ph0, ph1, pw0, pw1);
    auto& e = Lookup(fwd_cache, g, [&] {
      auto pd = FwdPd(g);
      return FwdEntry{dnnl::convolution_forward(pd), pd.weights_desc()};
    });
    std::lock_guard<std::mutex> exclusive(exec_mutex);
    dnnl::stream s(Engine());
    memory src(g.src(), Engine(), x.typed_data());
    memory dst(g.dst(), Engine(), y->typed_data());
    memory wei = KernelIn(g, e.wei_md, w.typed_data(), s);
    e.prim.execute(s, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, wei}, {DNNL_ARG_DST, dst}});
    s.wait();
  });
}

ffi::Error BackwardData(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> w,
                        ffi::ResultBuffer<ffi::F32> dx, int64_t sh, int64_t sw, int64_t ph0,
                        int64_t ph1, int64_t pw0, int64_t pw1) {
  return Guarded([&] {
    Geometry g =
        Make(dx->dimensions(), w.dimensions(), dy.dimensions(), sh, sw, ph0, ph1, pw0, pw1);
    auto& e = Lookup(bwd_data_cache, g, [&] {
      auto pd = dnnl::convolution_backward_data::primitive_desc(
          Engine(), dnnl::algorithm::convolution_direct, g.src(), g.wei(tag::any), g.dst(),
          g.strides(), g.pad_l(), g.pad_r(), FwdPd(g));
      return BwdDataEntry{dnnl::convolution_backward_data(pd), pd.weights_desc()};
    });
    std::lock_guard<std::mutex> exclusive(exec_mutex);
    dnnl::stream s(Engine());
    memory ddst(g.dst(), Engine(), dy.typed_data());
    memory dsrc(g.src(), Engine(), dx->typed_data());
    memory wei = KernelIn(g, e.wei_md, w.typed_data(), s);
    e.prim.execute(s,
                   {{DNNL_ARG_DIFF_DST, ddst}, {DNNL_ARG_WEIGHTS, wei}, {DNNL_ARG_DIFF_SRC, dsrc}});
    s.wait();
  });
}

ffi::Error BackwardKernel(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                          ffi::ResultBuffer<ffi::F32> dw, int64_t sh, int64_t sw, int64_t ph0,
                          int64_t ph1, int64_t pw0, int64_t pw1) {
  return Guarded([&] {
    Geometry g =
        Make(x.dimensions(), dw->dimensions(), dy.dimensions(), sh, sw, ph0, ph1, pw0, pw1);
    auto& e = Lookup(bwd_wei_cache, g, [&] {
      auto pd = dnnl::convolution_backward_weights::primitive_desc(
          Engine(), dnnl::algorithm::convolution_direct, g.src(), g.wei(tag::any), g.dst(),
          g.strides(), g.pad_l(), g.pad_r(), FwdPd(g));
      return BwdWeiEntry{dnnl::convolution_backward_weights(pd), pd.diff_weights_desc()};
    });
    std::lock_guard<std::mutex> exclusive(exec_mutex);
    dnnl::stream s(Engine());
    memory src(g.src(), Engine(), x.typed_data());
    memory ddst(g.dst(), Engine(), dy.typed_data());
    memory plain(g.wei(), Engine(), dw->typed_data());
    bool direct = e.wei_md == plain.get_desc();
    memory dwei = direct ? plain : memory(e.wei_md, Engine());
    e.prim.execute(s,
                   {{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, ddst}, {DNNL_ARG_DIFF_WEIGHTS, dwei}});
    if (!direct) dnnl::reorder(dwei, plain).execute(s, dwei, plain);
    s.wait();
  });
}

}  // namespace

#define CONV_ATTRS                                                                     \
  .Attr<int64_t>("stride_h").Attr<int64_t>("stride_w").Attr<int64_t>("pad_top")        \
      .Attr<int64_t>("pad_bottom").Attr<int64_t>("pad_left").Attr<int64_t>("pad_right")

XLA_FFI_DEFINE_HANDLER_SYMBOL(DnnlConvForward, Forward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() CONV_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(DnnlConvBackwardData, BackwardData,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() CONV_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(DnnlConvBackwardKernel, BackwardKernel,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() CONV_ATTRS);

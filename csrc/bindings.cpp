// Python bindings of aegaeon._C. Exceptions map onto the classes of
// aegaeon.errors so Python code catches one set of types.
#include <pybind11/stl.h>
// Only the tensor type casters and the version, not <torch/extension.h>: that pulls in all of libtorch's
// C++ API and made this file most of the install time.
#include <torch/csrc/utils/pybind.h>
#include <torch/headeronly/version.h>

#include "arena.h"
#include "slab_allocator.h"
#include "swap.h"

namespace py = pybind11;
using aegaeon::Arena;
using aegaeon::SlabAllocator;

namespace {

void register_exceptions() {
  static py::handle errors = py::module_::import("aegaeon.errors").release();
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const aegaeon::OutOfBlocksError& e) {
      PyErr_SetString(errors.attr("OutOfBlocksError").ptr(), e.what());
    } catch (const aegaeon::InvalidHandleError& e) {
      PyErr_SetString(errors.attr("InvalidHandleError").ptr(), e.what());
    } catch (const aegaeon::ArenaTooSmallError& e) {
      PyErr_SetString(errors.attr("ArenaTooSmallError").ptr(), e.what());
    } catch (const std::logic_error& e) {
      // std::invalid_argument and std::out_of_range derive from logic_error
      // and are already registered by pybind11; rethrowing keeps them.
      if (dynamic_cast<const std::invalid_argument*>(&e) || dynamic_cast<const std::out_of_range*>(&e)) throw;
      PyErr_SetString(errors.attr("IntegrityError").ptr(), e.what());
    }
  });
}

py::dict stats_to_dict(const aegaeon::AllocatorStats& st) {
  py::dict d;
  d["slab_bytes"] = st.slab_bytes;
  d["num_slabs"] = st.num_slabs;
  d["free_slabs"] = st.free_slabs;
  d["reserved_slabs"] = st.reserved_slabs;
  d["draining_slabs"] = st.draining_slabs;
  d["resident_slabs"] = st.resident_slabs;
  d["used_bytes"] = st.used_bytes;
  d["internal_fragmentation_bytes"] = st.internal_fragmentation_bytes;
  d["external_fragmentation_bytes"] = st.external_fragmentation_bytes;
  py::dict per_size;
  for (const auto& s : st.per_block_size) {
    py::dict entry;
    entry["slabs"] = s.slabs;
    entry["blocks_used"] = s.blocks_used;
    entry["blocks_capacity"] = s.blocks_capacity;
    per_size[py::int_(s.block_bytes)] = entry;
  }
  d["per_block_size"] = per_size;
  return d;
}

// Runs `pairs` allocate+free pairs of one block size in C++ and returns the
// seconds taken, so benchmarks can separate binding overhead from the work.
double bench_alloc_free_pairs(SlabAllocator& allocator, int64_t block_bytes, int64_t pairs, int64_t live) {
  std::vector<int64_t> handles;
  handles.reserve(static_cast<size_t>(live));
  for (int64_t i = 0; i < live; ++i) handles.push_back(allocator.allocate(block_bytes));
  const auto start = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < pairs; ++i) {
    auto& slot = handles[static_cast<size_t>(i % live)];
    allocator.free(slot);
    slot = allocator.allocate(block_bytes);
  }
  const auto stop = std::chrono::steady_clock::now();
  for (int64_t h : handles) allocator.free(h);
  return std::chrono::duration<double>(stop - start).count();
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "aegaeon C++ core: slab allocator and device arena";
  register_exceptions();

  py::class_<SlabAllocator>(m, "SlabAllocator", R"doc(
Slab allocator over num_slabs * slab_bytes bytes. Handles are byte offsets.
Each slab serves one block size at a time and returns to the pool when empty.
)doc")
      .def(py::init<int64_t, int64_t>(), py::arg("num_slabs"), py::arg("slab_bytes"))
      .def("allocate", &SlabAllocator::allocate, py::arg("block_bytes"),
           "Allocate one block; returns its handle. Raises OutOfBlocksError when full.")
      .def("free", &SlabAllocator::free, py::arg("handle"),
           "Free one block. Raises InvalidHandleError for foreign or freed handles.")
      .def("block_bytes_of", &SlabAllocator::block_bytes_of, py::arg("handle"))
      .def("is_allocated", &SlabAllocator::is_allocated, py::arg("handle"))
      .def("set_reserved_slabs", &SlabAllocator::set_reserved_slabs, py::arg("num_slabs"),
           "Move the weight-region boundary; returns the number of slabs still draining.")
      .def_property_readonly("reserved_boundary", &SlabAllocator::reserved_boundary)
      .def("draining_handles", &SlabAllocator::draining_handles)
      .def("handles_in_slab", &SlabAllocator::handles_in_slab, py::arg("slab"))
      .def("claim_run", &SlabAllocator::claim_run, py::arg("num_slabs"),
           "Claim the lowest run of num_slabs contiguous free slabs for resident weights; returns its first slab.")
      .def("release_run", &SlabAllocator::release_run, py::arg("first_slab"), py::arg("num_slabs"))
      .def("is_resident", &SlabAllocator::is_resident, py::arg("slab"))
      .def("run_fits_after_release", &SlabAllocator::run_fits_after_release, py::arg("num_slabs"),
           py::arg("first_slabs"), py::arg("run_slabs"))
      .def("stats", [](const SlabAllocator& a) { return stats_to_dict(a.stats()); },
           "Counters: slabs, used bytes, fragmentation, per block size.")
      .def("check_integrity", &SlabAllocator::check_integrity,
           "Recompute all counters from slab state; raises IntegrityError on drift.")
      .def_property_readonly("num_slabs", &SlabAllocator::num_slabs)
      .def_property_readonly("slab_bytes", &SlabAllocator::slab_bytes);

  py::class_<Arena>(m, "Arena", "One device buffer: weight region followed by a slab-managed KV region.")
      .def(py::init([](int64_t total_bytes, int64_t slab_bytes, const std::string& device) {
             return std::make_unique<Arena>(total_bytes, slab_bytes, c10::Device(device));
           }),
           py::arg("total_bytes"), py::arg("slab_bytes"), py::arg("device") = "cpu")
      .def("reserve_weights", &Arena::reserve_weights, py::arg("weight_bytes"))
      .def("relocate_draining", &Arena::relocate_draining)
      .def("weights_ready", &Arena::weights_ready)
      .def("weight_bytes_view", &Arena::weight_bytes_view, py::arg("offset"), py::arg("nbytes"))
      .def("allocate_block", &Arena::allocate_block, py::arg("block_bytes"))
      .def("free_block", &Arena::free_block, py::arg("handle"))
      .def("block_bytes_view", &Arena::block_bytes_view, py::arg("handle"))
      .def("run_bytes_view", &Arena::run_bytes_view, py::arg("first_slab"), py::arg("nbytes"))
      .def_property_readonly("allocator", py::overload_cast<>(&Arena::allocator), py::return_value_policy::reference_internal)
      .def_property_readonly("buffer", &Arena::buffer)
      .def_property_readonly("weight_bytes", &Arena::weight_bytes)
      .def_property_readonly("total_bytes", &Arena::total_bytes);

  m.def("copy_blocks", &aegaeon::copy_blocks, py::arg("src"), py::arg("src_offsets"), py::arg("dst"),
        py::arg("dst_offsets"), py::arg("block_bytes"), py::call_guard<py::gil_scoped_release>(),
        "Copy block i (block_bytes) from src[src_offsets[i]] to dst[dst_offsets[i]]; CPU loop or one CUDA launch "
        "on the current stream.");
  m.def("register_host_memory", &aegaeon::register_host_memory, py::arg("ptr"), py::arg("nbytes"),
        "Page-lock and map host memory for DMA (CUDA builds only).");
  m.def("unregister_host_memory", &aegaeon::unregister_host_memory, py::arg("ptr"));
  m.def("built_with_cuda", &aegaeon::built_with_cuda);
  m.attr("built_with_torch") = TORCH_VERSION;  // checked against the running torch at import (aegaeon.native)
  m.def("bench_alloc_free_pairs", &bench_alloc_free_pairs, py::arg("allocator"), py::arg("block_bytes"),
        py::arg("pairs"), py::arg("live"), "Seconds for `pairs` free+allocate pairs run in C++.");
}

# Every dependency comes from Debian 12's packages (scripts/setup.sh installs them).
find_package(PkgConfig REQUIRED)
find_package(Threads REQUIRED)

# Codec: c-blosc (bit-shuffle + LZ4/zstd) and zstd.
pkg_check_modules(BLOSC REQUIRED IMPORTED_TARGET blosc)
pkg_check_modules(ZSTD REQUIRED IMPORTED_TARGET libzstd)
# The header's CRC-32.
pkg_check_modules(ZLIB REQUIRED IMPORTED_TARGET zlib)
# A JPEG's header, read before it is decoded (libjpeg-turbo; OpenCV decodes with it too).
pkg_check_modules(JPEG REQUIRED IMPORTED_TARGET libjpeg)
# Model digests (sha256) and CURVE keys.
pkg_check_modules(SODIUM REQUIRED IMPORTED_TARGET libsodium)

# Wire.
pkg_check_modules(ZMQ REQUIRED IMPORTED_TARGET libzmq)
find_package(cppzmq REQUIRED)
find_package(Protobuf REQUIRED)

# Model graph and inference.
find_package(Torch REQUIRED)
# Any LibTorch works through -DTorch_DIR; one built with CUDA also runs tails on a GPU
# (edgesplit-server --device cuda:N, docs/server.md).
if(TORCH_CUDA_LIBRARIES OR C10_CUDA_LIBRARY)
  message(STATUS "edgesplit: LibTorch ${Torch_VERSION} with CUDA: --device cuda:N available")
else()
  message(STATUS "edgesplit: LibTorch ${Torch_VERSION} without CUDA: tails run on the CPU")
endif()
# LibTorch's intra-op threads are OpenMP threads (libgomp); the engine sets the calling thread's
# OpenMP team size around XNNPACK graphs (partitioner/model_graph.cc). Optional.
find_package(OpenMP COMPONENTS CXX)

# Input sources.
find_package(OpenCV REQUIRED COMPONENTS core imgproc imgcodecs videoio)

# CLI, JSON, logs, HTTP, tests.
find_package(cxxopts REQUIRED)
find_package(nlohmann_json REQUIRED)
find_package(spdlog REQUIRED)
# cpp-httplib: Debian builds it as a library (libcpp-httplib.so, with OpenSSL, zlib and Brotli
# options), so the header alone does not link: take the library and its cflags from pkg-config.
pkg_check_modules(CPP_HTTPLIB REQUIRED IMPORTED_TARGET GLOBAL cpp-httplib)
if(NOT TARGET edgesplit_httplib)
  add_library(edgesplit_httplib INTERFACE)
  target_link_libraries(edgesplit_httplib INTERFACE PkgConfig::CPP_HTTPLIB Threads::Threads)
endif()
find_package(doctest REQUIRED)
include(doctest)

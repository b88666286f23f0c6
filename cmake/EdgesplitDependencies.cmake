# Every dependency comes from Debian 12's packages (scripts/setup.sh installs them).
find_package(PkgConfig REQUIRED)
find_package(Threads REQUIRED)

# Codec: c-blosc (bit-shuffle + LZ4/zstd) and zstd.
pkg_check_modules(BLOSC REQUIRED IMPORTED_TARGET blosc)
pkg_check_modules(ZSTD REQUIRED IMPORTED_TARGET libzstd)
# Model digests (sha256) and CURVE keys.
pkg_check_modules(SODIUM REQUIRED IMPORTED_TARGET libsodium)

# Wire.
pkg_check_modules(ZMQ REQUIRED IMPORTED_TARGET libzmq)
find_package(cppzmq REQUIRED)
find_package(Protobuf REQUIRED)

# Model graph and inference.
find_package(Torch REQUIRED)

# Input sources.
find_package(OpenCV REQUIRED COMPONENTS core imgproc imgcodecs videoio)

# CLI, JSON, logs, HTTP, tests.
find_package(cxxopts REQUIRED)
find_package(nlohmann_json REQUIRED)
find_package(spdlog REQUIRED)
# cpp-httplib ships a header only (no CMake config in Debian 12).
find_path(HTTPLIB_INCLUDE_DIR httplib.h REQUIRED)
if(NOT TARGET edgesplit_httplib)
  add_library(edgesplit_httplib INTERFACE)
  target_include_directories(edgesplit_httplib SYSTEM INTERFACE ${HTTPLIB_INCLUDE_DIR})
  target_link_libraries(edgesplit_httplib INTERFACE Threads::Threads)
endif()
find_package(doctest REQUIRED)
include(doctest)

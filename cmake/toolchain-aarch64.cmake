# Cross-compiling edgesplit for aarch64 (arm64) Linux with Debian's aarch64-linux-gnu GCC
# (crossbuild-essential-arm64) against a Debian 12 arm64 sysroot that holds the -dev packages
# (scripts/cross-aarch64.sh makes one with debootstrap). Usage:
#   cmake -S . -B build-cross/build -DCMAKE_TOOLCHAIN_FILE=cmake/toolchain-aarch64.cmake \
#     -DEDGESPLIT_SYSROOT=/path/to/arm64/sysroot
# protoc runs on the build machine: it is the host's binary (the same protobuf version as the
# sysroot's libprotobuf, both from Debian 12), generating code compiled for aarch64.

set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

# The sysroot: -DEDGESPLIT_SYSROOT, else $EDGESPLIT_SYSROOT, else build-cross/sysroot in the tree.
if(NOT EDGESPLIT_SYSROOT)
  if(DEFINED ENV{EDGESPLIT_SYSROOT})
    set(EDGESPLIT_SYSROOT "$ENV{EDGESPLIT_SYSROOT}")
  else()
    get_filename_component(EDGESPLIT_SYSROOT "${CMAKE_CURRENT_LIST_DIR}/../build-cross/sysroot"
                           ABSOLUTE)
  endif()
endif()
if(NOT EXISTS "${EDGESPLIT_SYSROOT}/usr/lib/aarch64-linux-gnu")
  message(FATAL_ERROR "No arm64 sysroot at ${EDGESPLIT_SYSROOT}: make one with "
                      "scripts/cross-aarch64.sh --sysroot-only, or pass -DEDGESPLIT_SYSROOT=DIR.")
endif()
# try_compile projects re-read this file; they must see the same sysroot.
list(APPEND CMAKE_TRY_COMPILE_PLATFORM_VARIABLES EDGESPLIT_SYSROOT)

set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
set(CMAKE_SYSROOT "${EDGESPLIT_SYSROOT}")
set(CMAKE_FIND_ROOT_PATH "${EDGESPLIT_SYSROOT}")

# Programs (protoc) from the host; libraries, headers and CMake packages from the sysroot only.
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

# pkg-config reads the sysroot's .pc files and prefixes their paths with the sysroot.
set(ENV{PKG_CONFIG_PATH} "")
set(ENV{PKG_CONFIG_LIBDIR}
    "${EDGESPLIT_SYSROOT}/usr/lib/aarch64-linux-gnu/pkgconfig:${EDGESPLIT_SYSROOT}/usr/share/pkgconfig")
set(ENV{PKG_CONFIG_SYSROOT_DIR} "${EDGESPLIT_SYSROOT}")

# Debian selects BLAS and LAPACK through absolute alternatives symlinks, which point outside the
# sysroot when followed on the build machine; the linker finds libtorch's indirect dependencies
# in the real folders instead.
set(_edgesplit_arm64_lib "${EDGESPLIT_SYSROOT}/usr/lib/aarch64-linux-gnu")
string(CONCAT _edgesplit_rpath_link
  " -Wl,-rpath-link,${_edgesplit_arm64_lib}/lapack"
  " -Wl,-rpath-link,${_edgesplit_arm64_lib}/blas"
  " -Wl,-rpath-link,${_edgesplit_arm64_lib}")
set(CMAKE_EXE_LINKER_FLAGS_INIT "${_edgesplit_rpath_link}")
set(CMAKE_SHARED_LINKER_FLAGS_INIT "${_edgesplit_rpath_link}")
set(CMAKE_MODULE_LINKER_FLAGS_INIT "${_edgesplit_rpath_link}")

# Run the arm64 binaries (test discovery, checks) under qemu with the sysroot's libraries.
find_program(EDGESPLIT_QEMU_AARCH64 qemu-aarch64-static qemu-aarch64)
if(EDGESPLIT_QEMU_AARCH64)
  set(CMAKE_CROSSCOMPILING_EMULATOR
      "${EDGESPLIT_QEMU_AARCH64};-L;${EDGESPLIT_SYSROOT};-E;LD_LIBRARY_PATH=${_edgesplit_arm64_lib}/lapack:${_edgesplit_arm64_lib}/blas")
endif()

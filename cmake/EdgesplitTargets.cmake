# Helpers that give edgesplit's own targets the same warnings, sanitizers and layout.

# edgesplit_target_defaults(TARGET): warnings (and -Werror when EDGESPLIT_WERROR), sanitizer, repo-root includes.
function(edgesplit_target_defaults target)
  target_compile_options(${target} PRIVATE -Wall -Wextra)
  if(EDGESPLIT_WERROR)
    target_compile_options(${target} PRIVATE -Werror)
  endif()
  if(EDGESPLIT_SANITIZE)
    target_compile_options(${target} PRIVATE -fsanitize=${EDGESPLIT_SANITIZE} -fno-omit-frame-pointer)
    target_link_options(${target} PRIVATE -fsanitize=${EDGESPLIT_SANITIZE})
    # ThreadSanitizer's runtime is not ready when the loader runs ifunc resolvers (the AVX2
    # clones' selection), which are instrumented too: build the baseline loops only.
    if(EDGESPLIT_SANITIZE MATCHES "thread")
      target_compile_definitions(${target} PRIVATE EDGESPLIT_NO_TARGET_CLONES)
    endif()
    # UBSan's vptr check references the typeinfo of the classes it checks, and LibTorch does not
    # export all of its own (c10::DynamicType): with LibTorch configured, the check is left out.
    if(EDGESPLIT_SANITIZE MATCHES "undefined" AND "partitioner" IN_LIST EDGESPLIT_COMPONENTS)
      target_compile_options(${target} PRIVATE -fno-sanitize=vptr)
    endif()
  endif()
endfunction()

# edgesplit_library(NAME SOURCES...): library edgesplit_NAME with ALIAS edgesplit::NAME.
# Includes spell the path from the repository root ("packing/codec.h").
function(edgesplit_library name)
  add_library(edgesplit_${name} ${ARGN})
  add_library(edgesplit::${name} ALIAS edgesplit_${name})
  target_include_directories(edgesplit_${name} PUBLIC $<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}>)
  set_target_properties(edgesplit_${name} PROPERTIES POSITION_INDEPENDENT_CODE ON)
  edgesplit_target_defaults(edgesplit_${name})
endfunction()

# edgesplit_executable(NAME SOURCES...): an executable in build/bin.
function(edgesplit_executable name)
  add_executable(${name} ${ARGN})
  target_include_directories(${name} PRIVATE ${PROJECT_SOURCE_DIR})
  edgesplit_target_defaults(${name})
endfunction()

# edgesplit_test(NAME LABEL SOURCES... [LIBS libs...]): a doctest executable registered with ctest
# (one ctest entry per test case), labelled LABEL (unit, integration, netns, ...).
function(edgesplit_test name label)
  cmake_parse_arguments(T "" "TIMEOUT" "SOURCES;LIBS" ${ARGN})
  add_executable(${name} ${T_SOURCES})
  set_target_properties(${name} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/tests)
  target_include_directories(${name} PRIVATE ${PROJECT_SOURCE_DIR})
  target_link_libraries(${name} PRIVATE edgesplit_doctest_main ${T_LIBS})
  target_compile_definitions(${name} PRIVATE
    EDGESPLIT_SOURCE_DIR="${PROJECT_SOURCE_DIR}"
    EDGESPLIT_BINARY_DIR="${PROJECT_BINARY_DIR}")
  edgesplit_target_defaults(${name})
  if(NOT T_TIMEOUT)
    set(T_TIMEOUT 300)
  endif()
  # A test case that cannot run here (no ../shared, not root, no python3-torch) says
  # MESSAGE("skipped: <why>") and returns: ctest counts it as skipped, not passed.
  doctest_discover_tests(${name}
    WORKING_DIRECTORY ${PROJECT_BINARY_DIR}
    PROPERTIES LABELS ${label} TIMEOUT ${T_TIMEOUT} SKIP_REGULAR_EXPRESSION "skipped: ")
endfunction()

# edgesplit_fuzz_target(NAME SOURCE FILE LIBS libs... INSTRUMENT targets...): a libFuzzer target
# in build/bin (clang; scripts/fuzz.sh builds and runs it) with ASan and UBSan; the INSTRUMENT
# libraries get coverage and the same sanitizers.
function(edgesplit_fuzz_target name)
  cmake_parse_arguments(F "" "SOURCE" "LIBS;INSTRUMENT" ${ARGN})
  set(sanitizers -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
                 -fno-omit-frame-pointer -g)
  add_executable(${name} ${F_SOURCE})
  target_include_directories(${name} PRIVATE ${PROJECT_SOURCE_DIR})
  target_link_libraries(${name} PRIVATE ${F_LIBS})
  target_compile_options(${name} PRIVATE ${sanitizers})
  target_link_options(${name} PRIVATE -fsanitize=fuzzer,address,undefined)
  foreach(lib ${F_INSTRUMENT})
    target_compile_options(${lib} PRIVATE -fsanitize=fuzzer-no-link,address,undefined
                                          -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g)
  endforeach()
  set_target_properties(${name} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/bin)
endfunction()

// LibTorch then doctest, in that order: Debian's LibTorch brings glog, whose CHECK/CHECK_EQ/...
// macros would otherwise replace doctest's (a failed glog CHECK aborts the test process).
#pragma once

#include <torch/script.h>
#include <torch/torch.h>

#undef CHECK
#undef CHECK_EQ
#undef CHECK_NE
#undef CHECK_LT
#undef CHECK_LE
#undef CHECK_GT
#undef CHECK_GE

#include <doctest/doctest.h>

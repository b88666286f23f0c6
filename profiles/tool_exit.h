// How the profiles tools (edgesplit-profile, edgesplit-family) end on an error: one sentence on
// stderr after the tool's name, exit status 2 for what the user can fix (a bad flag or value, a
// missing file: kInvalidArgument, kNotFound), 1 for a failure while running.
#pragma once

#include <iostream>
#include <string>

#include "packing/status.h"

namespace edgesplit::profiles {

inline int usage_error(const char* tool, const std::string& message) {
  std::cerr << tool << ": " << message << '\n';
  return 2;
}

inline int exit_status(const char* tool, const Status& status) {
  std::cerr << tool << ": " << status.message() << '\n';
  const auto code = status.code();
  return code == StatusCode::kInvalidArgument || code == StatusCode::kNotFound ? 2 : 1;
}

}  // namespace edgesplit::profiles

// What edgesplit-server runs: its options from the command line, or help to print. Free of
// LibTorch: parsing and checking flags loads no model (key files are read here, models are not).
#pragma once

#include <spdlog/common.h>

#include <cstddef>
#include <optional>
#include <string>

#include "packing/status.h"
#include "server/server.h"

namespace edgesplit::server {

// What the command line asks for: a server to run, or help to print.
struct ServerCommand {
  ServerOptions options;
  // Write the bound endpoint (port resolved) here once listening; empty: none.
  std::string endpoint_file;
  // Write the HTTP port here once listening; empty: none (needs --http-port).
  std::string http_port_file;
  spdlog::level::level_enum log_level = spdlog::level::info;
  bool help = false;
  std::string help_text;  // set when help is true
};

// A size as flags write it: a number of bytes, or one followed by K, M or G (KiB, MiB, GiB; also
// written k, m, g or KiB, MiB, GiB). nullopt for anything else, or a size over SIZE_MAX.
std::optional<size_t> parse_byte_size(const std::string& text);

// Parses edgesplit-server's command line: --model (repeatable, at least one), --profile/--meta per
// model, limits and ranges, CURVE key files (read here: --curve-secret, --allow-keys), the HTTP
// endpoint and --log-level. kInvalidArgument with one sentence (naming the flag) for anything
// wrong.
Result<ServerCommand> parse_server_flags(int argc, const char* const* argv);

}  // namespace edgesplit::server

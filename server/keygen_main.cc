// edgesplit-keygen: makes a CURVE key pair for a server or a device and writes it as two files,
// BASE.key (the secret, mode 0600) and BASE.pub (the public key, to hand out or to list in a
// server's --allow-keys file).
#include <cxxopts.hpp>
#include <iostream>

#include "transport/curve.h"

namespace {

int usage_error(const std::string& message) {
  std::cerr << "edgesplit-keygen: " << message << " (see edgesplit-keygen --help)\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  cxxopts::Options cli("edgesplit-keygen",
                       "Writes a CURVE key pair: BASE.key (secret, mode 0600) and BASE.pub "
                       "(public). Servers take --curve-secret BASE.key; devices take "
                       "--server-key SERVER.pub and --key DEVICE.key; a server's --allow-keys "
                       "file lists device .pub keys, one per line.");
  // clang-format off
  cli.add_options()
    ("out", "base path of the two files (BASE.key, BASE.pub)", cxxopts::value<std::string>())
    ("force", "replace existing files")
    ("public-of", "print the public key of this secret key file and exit", cxxopts::value<std::string>())
    ("h,help", "show this help");
  // clang-format on
  cli.parse_positional({"out"});
  cxxopts::ParseResult args;
  try {
    args = cli.parse(argc, argv);
  } catch (const cxxopts::exceptions::exception& e) {
    return usage_error(e.what());
  }
  if (args.count("help")) {
    std::cout << cli.help() << '\n';
    return 0;
  }
  if (args.count("public-of")) {
    auto secret = edgesplit::transport::read_key_file(args["public-of"].as<std::string>());
    if (!secret.ok()) return usage_error(secret.status().message());
    auto pub = edgesplit::transport::curve_public_key(*secret);
    if (!pub.ok()) return usage_error(pub.status().message());
    std::cout << *pub << '\n';
    return 0;
  }
  if (!args.count("out"))
    return usage_error("no output given: pass BASE (writes BASE.key, BASE.pub)");
  auto keys = edgesplit::transport::generate_curve_keypair();
  if (!keys.ok()) {
    std::cerr << "edgesplit-keygen: " << keys.status().message() << '\n';
    return 1;
  }
  const std::string base = args["out"].as<std::string>();
  edgesplit::Status s = edgesplit::transport::write_key_files(base, *keys, args.count("force") > 0);
  if (!s.ok()) {
    std::cerr << "edgesplit-keygen: " << s.message() << '\n';
    return 1;
  }
  std::cout << "wrote " << base << ".key (secret, mode 0600) and " << base
            << ".pub (public): " << keys->public_key << '\n';
  return 0;
}

// Checks edgesplit-server's command line (server/flags.h): the defaults, every flag mapped to its
// option, repeated --model/--profile/--meta, CURVE key files read, --help, and one sentence naming
// the flag for each refused value.
#include <doctest/doctest.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "server/flags.h"

namespace fs = std::filesystem;
using edgesplit::Result;
using edgesplit::StatusCode;
using edgesplit::partitioner::Engine;
using edgesplit::server::parse_server_flags;
using edgesplit::server::ServerCommand;

namespace {

// Two Z85 keys (the ZeroMQ CURVE examples): a secret key and a public key.
const std::string kSecretKey = "D:)Q[IlAW!ahhC2ac:9*A}h:p?([4%wOTJ%JR%cs";
const std::string kPublicKey = "Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hID";

fs::path scratch_dir(const std::string& name) {
  const fs::path d = fs::path(EDGESPLIT_BINARY_DIR) / "test-scratch" /
                     ("server-flags-" + name + "-" + std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

void write_file(const fs::path& path, const std::string& text) {
  std::ofstream f(path);
  f << text;
}

Result<ServerCommand> parse(std::vector<std::string> args) {
  args.insert(args.begin(), "edgesplit-server");
  std::vector<const char*> argv;
  for (const std::string& a : args) argv.push_back(a.c_str());
  return parse_server_flags(static_cast<int>(argv.size()), argv.data());
}

// The flag is refused with kInvalidArgument and this exact sentence.
void check_refused(const std::vector<std::string>& args, const std::string& sentence) {
  auto command = parse(args);
  REQUIRE_FALSE(command.ok());
  CHECK(command.status().code() == StatusCode::kInvalidArgument);
  CHECK(command.status().message() == sentence);
}

}  // namespace

TEST_CASE("server flags: defaults with one --model") {
  auto command = parse({"--model", "m.pt"});
  REQUIRE(command.ok());
  CHECK_FALSE(command->help);
  const auto& o = command->options;
  CHECK(o.router.endpoint == "tcp://*:5555");
  CHECK(o.model_paths == std::vector<std::string>{"m.pt"});
  CHECK(o.meta_paths.empty());
  CHECK(o.profile_paths.empty());
  CHECK(o.workers == 1);
  CHECK(o.warmup_runs == 2);
  CHECK(o.compute_threads == 0);
  CHECK(o.engine == Engine::kOptimized);
  CHECK(o.device == "cpu");
  CHECK(o.router.dead_peer_timeout == std::chrono::seconds(30));
  CHECK(o.queue_capacity == 64);
  CHECK(o.router.limits.max_message_bytes == size_t{64} << 20);
  CHECK(o.name == "edgesplit-server");
  CHECK(o.max_in_flight_per_client == 32);
  CHECK(o.decode_limits.max_elements == 67108864u);
  CHECK(o.router.curve_secret_key.empty());
  CHECK_FALSE(o.use_allow_list);
  CHECK(o.allowed_keys.empty());
  CHECK(o.http_port == -1);
  CHECK(o.http_host == "127.0.0.1");
  CHECK(o.shutdown_timeout == std::chrono::milliseconds(10000));
  CHECK(o.slow_tail == std::chrono::milliseconds(0));
  CHECK(o.slow_io == std::chrono::microseconds(0));
  CHECK(o.max_queued_bytes == size_t{256} << 20);
  CHECK(command->endpoint_file.empty());
  CHECK(command->http_port_file.empty());
  CHECK(command->log_level == spdlog::level::info);
}

TEST_CASE("server flags: every flag maps to its option") {
  auto command = parse({"--bind",
                        "tcp://127.0.0.1:7000",
                        "--model",
                        "a.pt",
                        "--workers",
                        "3",
                        "--warmup-runs",
                        "0",
                        "--threads",
                        "2",
                        "--engine",
                        "xnnpack",
                        "--device",
                        "cuda:1",
                        "--queue",
                        "5",
                        "--max-message-mb",
                        "8",
                        "--name",
                        "edge-1",
                        "--endpoint-file",
                        "ep.txt",
                        "--max-in-flight-per-client",
                        "4",
                        "--max-tensor-elements",
                        "1000",
                        "--http-port",
                        "0",
                        "--http-bind",
                        "127.0.0.1",
                        "--http-port-file",
                        "port.txt",
                        "--shutdown-timeout-ms",
                        "250",
                        "--slow-tail-ms",
                        "7",
                        "--slow-io-us",
                        "300",
                        "--max-queued-bytes",
                        "96M",
                        "--log-level",
                        "debug"});
  REQUIRE(command.ok());
  const auto& o = command->options;
  CHECK(o.router.endpoint == "tcp://127.0.0.1:7000");
  CHECK(o.model_paths == std::vector<std::string>{"a.pt"});
  CHECK(o.workers == 3);
  CHECK(o.warmup_runs == 0);
  CHECK(o.compute_threads == 2);
  CHECK(o.engine == Engine::kXnnpack);
  CHECK(o.device == "cuda:1");
  CHECK(o.queue_capacity == 5);
  CHECK(o.router.limits.max_message_bytes == size_t{8} << 20);
  CHECK(o.name == "edge-1");
  CHECK(o.max_in_flight_per_client == 4);
  CHECK(o.decode_limits.max_elements == 1000u);
  CHECK(o.http_port == 0);
  CHECK(o.http_host == "127.0.0.1");
  CHECK(o.shutdown_timeout == std::chrono::milliseconds(250));
  CHECK(o.slow_tail == std::chrono::milliseconds(7));
  CHECK(o.slow_io == std::chrono::microseconds(300));
  CHECK(o.max_queued_bytes == size_t{96} << 20);
  CHECK(command->endpoint_file == "ep.txt");
  CHECK(command->http_port_file == "port.txt");
  CHECK(command->log_level == spdlog::level::debug);

  for (const auto& [name, engine] :
       std::vector<std::pair<std::string, Engine>>{{"optimized", Engine::kOptimized},
                                                   {"onednn", Engine::kOneDnn},
                                                   {"xnnpack", Engine::kXnnpack},
                                                   {"plain", Engine::kPlain}}) {
    auto c = parse({"--model", "a.pt", "--engine", name});
    REQUIRE(c.ok());
    CHECK(c->options.engine == engine);
  }
  for (const auto& [name, level] : std::vector<std::pair<std::string, spdlog::level::level_enum>>{
           {"trace", spdlog::level::trace},
           {"warn", spdlog::level::warn},
           {"error", spdlog::level::err},
           {"off", spdlog::level::off}}) {
    auto c = parse({"--model", "a.pt", "--log-level", name});
    REQUIRE(c.ok());
    CHECK(c->log_level == level);
  }
  // The range ends are accepted.
  auto ends = parse({"--model", "a.pt", "--max-message-mb", "4096", "--http-port", "65535",
                     "--shutdown-timeout-ms", "0", "--queue", "1"});
  REQUIRE(ends.ok());
  CHECK(ends->options.router.limits.max_message_bytes == size_t{4096} << 20);
  CHECK(ends->options.http_port == 65535);
  CHECK(ends->options.shutdown_timeout == std::chrono::milliseconds(0));
  CHECK(ends->options.queue_capacity == 1);
  // Left unset, the byte budget holds at least one request of the largest size.
  CHECK(ends->options.max_queued_bytes == size_t{4096} << 20);
  auto exact = parse({"--model", "a.pt", "--max-message-mb", "1", "--max-queued-bytes", "1048576"});
  REQUIRE(exact.ok());
  CHECK(exact->options.max_queued_bytes == size_t{1} << 20);
  // The tensor cache: 1 GiB unless set; 0 keeps nothing.
  CHECK(exact->options.tensor_cache_bytes == size_t{1} << 30);
  auto no_cache = parse({"--model", "a.pt", "--tensor-cache", "0"});
  REQUIRE(no_cache.ok());
  CHECK(no_cache->options.tensor_cache_bytes == 0);
  auto cache = parse({"--model", "a.pt", "--tensor-cache", "256M"});
  REQUIRE(cache.ok());
  CHECK(cache->options.tensor_cache_bytes == size_t{256} << 20);
}

TEST_CASE("server flags: --heartbeat-timeout-s sets the dead-peer timeout") {
  auto command = parse({"--model", "m.pt", "--heartbeat-timeout-s", "300"});
  REQUIRE(command.ok());
  CHECK(command->options.router.dead_peer_timeout == std::chrono::seconds(300));
}

TEST_CASE("server flags: sizes in bytes or with a unit") {
  using edgesplit::server::parse_byte_size;
  CHECK(parse_byte_size("0") == size_t{0});
  CHECK(parse_byte_size("4096") == size_t{4096});
  CHECK(parse_byte_size("64K") == size_t{64} << 10);
  CHECK(parse_byte_size("256M") == size_t{256} << 20);
  CHECK(parse_byte_size("256MiB") == size_t{256} << 20);
  CHECK(parse_byte_size("2g") == size_t{2} << 30);
  for (const char* bad :
       {"", "M", "-1", "1.5G", "12 M", "1T", "99999999999999999999999", "17179869184G"}) {
    CAPTURE(bad);
    CHECK_FALSE(parse_byte_size(bad).has_value());
  }
}

TEST_CASE("server flags: batching settings") {
  auto command =
      parse({"--model", "a.pt", "--max-batch", "16", "--preferred-batch", "8,4",
             "--max-queue-delay-us", "2000", "--batch-from", "backlog", "--workers", "3",
             "--saturated-load", "0.9", "--expire-at-arrival", "off", "--fit-deadlines", "off"});
  REQUIRE(command.ok());
  CHECK(command->options.batch_backlog_only);
  CHECK_FALSE(batching_options(command->options).expire_at_arrival);
  CHECK_FALSE(batching_options(command->options).fit_deadlines);
  CHECK(batching_options(command->options).backlog_only);
  CHECK(batching_options(command->options).saturated_load == doctest::Approx(0.9));
  CHECK(batching_options(command->options).workers == 3);  // the backlog rule's worker count
  CHECK(command->options.max_batch == 16);
  CHECK(command->options.preferred_batch == std::vector<size_t>{8, 4});
  CHECK(command->options.max_queue_delay == std::chrono::microseconds(2000));
  auto defaults = parse({"--model", "a.pt"});
  REQUIRE(defaults.ok());
  CHECK(defaults->options.max_batch == 1);
  CHECK(defaults->options.preferred_batch.empty());
  CHECK(defaults->options.max_queue_delay.count() == 0);
  CHECK_FALSE(defaults->options.batch_backlog_only);
  CHECK(batching_options(defaults->options).saturated_load == doctest::Approx(1.2));
  CHECK(batching_options(defaults->options).fit_deadlines);
  CHECK(batching_options(defaults->options).fit_margin == 0);
  auto margin = parse({"--model", "a.pt", "--fit-margin", "1.5"});
  REQUIRE(margin.ok());
  CHECK(batching_options(margin->options).fit_margin == doctest::Approx(1.5));
  CHECK(batching_options(defaults->options).expire_at_arrival);
}

TEST_CASE("server flags: --model, --profile and --meta repeat in order") {
  auto command =
      parse({"--model", "a.pt", "--profile", "a.json", "--meta", "a.meta.json", "--model", "b.pt",
             "--profile", "b.json", "--meta", "b.meta.json", "--model", "c.pt"});
  REQUIRE(command.ok());
  const auto& o = command->options;
  CHECK(o.model_paths == std::vector<std::string>{"a.pt", "b.pt", "c.pt"});
  CHECK(o.profile_paths == std::vector<std::string>{"a.json", "b.json"});
  CHECK(o.meta_paths == std::vector<std::string>{"a.meta.json", "b.meta.json"});
}

TEST_CASE("server flags: --exits repeats, one file per model") {
  auto command = parse(
      {"--model", "a.pt", "--exits", "a_exits.json", "--model", "b.pt", "--exits", "b_exits.json"});
  REQUIRE(command.ok());
  CHECK(command->options.exits_paths == std::vector<std::string>{"a_exits.json", "b_exits.json"});
  auto none = parse({"--model", "a.pt"});
  REQUIRE(none.ok());
  CHECK(none->options.exits_paths.empty());
}

TEST_CASE("server flags: --family adds every member after the --model files") {
  const fs::path dir = scratch_dir("family");
  write_file(dir / "family.json", R"({"family": "f", "members": [
      {"name": "big", "model": "big.pt", "profile": "big.profile.json"},
      {"name": "big-160px", "model": "big.pt", "variant": {"input_size": 160}},
      {"name": "small", "model": "small.pt", "meta": "small.meta.json"}]})");
  auto command =
      parse({"--model", "a.pt", "--profile", "a.json", "--family", (dir / "family.json").string()});
  REQUIRE(command.ok());
  const auto& o = command->options;
  REQUIRE(o.model_paths.size() == 4);
  CHECK(o.model_paths[0] == "a.pt");
  CHECK(o.model_paths[1] == (dir / "big.pt").string());
  CHECK(o.model_paths[3] == (dir / "small.pt").string());
  REQUIRE(o.profile_paths.size() == 4);
  CHECK(o.profile_paths[0] == "a.json");
  CHECK(o.profile_paths[1] == (dir / "big.profile.json").string());
  CHECK(o.profile_paths[2].empty());
  REQUIRE(o.meta_paths.size() == 4);
  CHECK(o.meta_paths[3] == (dir / "small.meta.json").string());
  REQUIRE(o.variants.size() == 4);
  CHECK(o.variants[0].empty());
  CHECK(o.variants[2].input_size == 160);
  // Only a family: no --model needed. A bad manifest: one sentence naming the flag.
  CHECK(parse({"--family", (dir / "family.json").string()}).ok());
  write_file(dir / "bad.json", R"({"family": "f", "members": []})");
  auto bad = parse({"--family", (dir / "bad.json").string()});
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.status().message().find("--family") != std::string::npos);
  fs::remove_all(dir);
}

TEST_CASE("server flags: --help gives the help text and needs no model") {
  for (const std::string flag : {"--help", "-h"}) {
    auto command = parse({flag});
    REQUIRE(command.ok());
    CHECK(command->help);
    const std::string& text = command->help_text;
    CHECK(text.find("Usage:") != std::string::npos);
    CHECK(text.find("edgesplit-server") != std::string::npos);
    CHECK(text.find("Serves the tails of split CNNs") != std::string::npos);
    for (const char* name : {"--bind",
                             "--model",
                             "--profile",
                             "--meta",
                             "--workers",
                             "--threads",
                             "--engine",
                             "--queue",
                             "--max-message-mb",
                             "--name",
                             "--endpoint-file",
                             "--max-in-flight-per-client",
                             "--max-tensor-elements",
                             "--curve-secret",
                             "--allow-keys",
                             "--http-port",
                             "--http-bind",
                             "--http-port-file",
                             "--shutdown-timeout-ms",
                             "--slow-tail-ms",
                             "--slow-io-us",
                             "--max-queued-bytes",
                             "--log-level"}) {
      CHECK_MESSAGE(text.find(name) != std::string::npos, name);
    }
  }
  // Help wins over flags that would be refused.
  auto command = parse({"--queue", "0", "--help"});
  REQUIRE(command.ok());
  CHECK(command->help);
}

TEST_CASE("server flags: bad values are refused with a sentence naming the flag") {
  check_refused({}, "no model given: pass --model FILE.pt or --family FAMILY.json");
  check_refused({"--workers", "2"}, "no model given: pass --model FILE.pt or --family FAMILY.json");
  const std::vector<std::string> m = {"--model", "a.pt"};
  auto with = [&](std::vector<std::string> extra) {
    std::vector<std::string> args = m;
    args.insert(args.end(), extra.begin(), extra.end());
    return args;
  };
  check_refused(with({"--log-level", "loud"}),
                "--log-level must be one of trace, debug, info, warn, error");
  check_refused(with({"--engine", "cuda"}), "--engine must be optimized, onednn, xnnpack or plain");
  check_refused(with({"--device", "gpu"}), "--device must be cpu or cuda:N, not 'gpu'");
  check_refused(with({"--queue", "0"}), "--queue must be at least 1");
  check_refused(with({"--warmup-runs", "-1"}),
                "--warmup-runs must be 0 to 100 (runs of each model per worker)");
  check_refused(with({"--warmup-runs", "101"}),
                "--warmup-runs must be 0 to 100 (runs of each model per worker)");
  check_refused(with({"--heartbeat-timeout-s", "0"}),
                "--heartbeat-timeout-s must be between 1 and 3000 seconds");
  check_refused(with({"--max-message-mb", "0"}), "--max-message-mb must be between 1 and 4096");
  check_refused(with({"--max-message-mb", "4097"}), "--max-message-mb must be between 1 and 4096");
  check_refused(with({"--max-in-flight-per-client", "0"}),
                "--max-in-flight-per-client must be at least 1");
  check_refused(with({"--max-tensor-elements", "0"}), "--max-tensor-elements must be at least 1");
  check_refused(with({"--http-port", "-1"}), "--http-port must be 0..65535");
  check_refused(with({"--http-port", "65536"}), "--http-port must be 0..65535");
  check_refused(with({"--shutdown-timeout-ms", "-1"}), "--shutdown-timeout-ms must be 0 or more");
  check_refused(with({"--slow-tail-ms", "-5"}), "--slow-tail-ms must be 0 or more");
  check_refused(with({"--slow-io-us", "-5"}), "--slow-io-us must be 0 or more");
  const std::string queued_sentence =
      "--max-queued-bytes takes a size of at least --max-message-mb, in bytes or with K, M or G "
      "(as 256M)";
  check_refused(with({"--max-queued-bytes", "lots"}), queued_sentence);
  check_refused(with({"--max-queued-bytes", "32M"}), queued_sentence);  // under 64 MiB
  check_refused(with({"--max-message-mb", "8", "--max-queued-bytes", "4M"}), queued_sentence);
  check_refused(with({"--tensor-cache", "-1"}),
                "--tensor-cache takes a size in bytes or with K, M or G (as 1G), or 0");
  check_refused(with({"--allow-keys", "keys.txt"}),
                "--allow-keys needs --curve-secret: device keys are checked in the CURVE "
                "handshake");
  check_refused(with({"--http-port-file", "port.txt"}), "--http-port-file needs --http-port");
  check_refused(with({"--max-batch", "0"}), "--max-batch must be at least 1");
  check_refused(with({"--max-batch", "4", "--preferred-batch", "2,8"}),
                "--preferred-batch sizes must be between 1 and --max-batch (4); got 8");
  check_refused(with({"--max-batch", "4", "--preferred-batch", "2,x"}),
                "--preferred-batch takes batch sizes separated by commas, as 4,8");
  check_refused(with({"--max-queue-delay-us", "-1"}), "--max-queue-delay-us must be 0 or more");
  check_refused(with({"--batch-from", "queue"}),
                "--batch-from must be ready or backlog, not 'queue'");
  check_refused(with({"--expire-at-arrival", "yes"}),
                "--expire-at-arrival must be on or off, not 'yes'");
  check_refused(with({"--fit-deadlines", "1"}), "--fit-deadlines must be on or off, not '1'");
  check_refused(with({"--fit-margin", "-1"}),
                "--fit-margin must be between 0 and 10 (mean deviations)");
  check_refused(with({"--saturated-load", "0"}),
                "--saturated-load must be above 0 (1 = the workers' capacity at batch 1), at most "
                "10");

  // cxxopts' own errors (unknown flag, not a number, missing value) name the flag too.
  for (const std::vector<std::string>& args :
       {with({"--no-such-flag"}), with({"--workers", "many"}), with({"--queue"})}) {
    auto command = parse(args);
    REQUIRE_FALSE(command.ok());
    CHECK(command.status().code() == StatusCode::kInvalidArgument);
  }
  auto unknown = parse(with({"--no-such-flag"}));
  CHECK(unknown.status().message().find("no-such-flag") != std::string::npos);
  auto not_a_number = parse(with({"--workers", "many"}));
  CHECK(not_a_number.status().message().find("many") != std::string::npos);
  auto no_value = parse(with({"--queue"}));
  CHECK(no_value.status().message().find("queue") != std::string::npos);
}

TEST_CASE("server flags: --curve-secret and --allow-keys read their key files") {
  const fs::path dir = scratch_dir("keys");
  const fs::path secret = dir / "server.key";
  const fs::path allow = dir / "devices.txt";
  write_file(secret, "# edgesplit CURVE secret key: keep it private\n" + kSecretKey + "\n");
  write_file(allow, "# devices\n\n" + kPublicKey + "\n" + kSecretKey + "\n");

  auto command = parse({"--model", "a.pt", "--curve-secret", secret.string()});
  REQUIRE(command.ok());
  CHECK(command->options.router.curve_secret_key == kSecretKey);
  CHECK_FALSE(command->options.use_allow_list);

  command =
      parse({"--model", "a.pt", "--curve-secret", secret.string(), "--allow-keys", allow.string()});
  REQUIRE(command.ok());
  CHECK(command->options.router.curve_secret_key == kSecretKey);
  CHECK(command->options.use_allow_list);
  CHECK(command->options.allowed_keys == std::set<std::string>{kPublicKey, kSecretKey});

  // A missing file and a file with no valid key are refused, naming the flag and the file.
  const fs::path missing = dir / "missing.key";
  check_refused({"--model", "a.pt", "--curve-secret", missing.string()},
                "--curve-secret: cannot read key file " + missing.string());
  const fs::path bad = dir / "bad.key";
  write_file(bad, "not a key\n");
  check_refused({"--model", "a.pt", "--curve-secret", bad.string()},
                "--curve-secret: key file " + bad.string() +
                    " line 1 is not a 40-character Z85 CURVE key (make one with edgesplit-keygen)");
  const fs::path empty = dir / "empty.key";
  write_file(empty, "# nothing here\n");
  check_refused({"--model", "a.pt", "--curve-secret", empty.string()},
                "--curve-secret: key file " + empty.string() + " holds no key");
  const fs::path bad_allow = dir / "bad-allow.txt";
  write_file(bad_allow, kPublicKey + "\nshort\n");
  check_refused(
      {"--model", "a.pt", "--curve-secret", secret.string(), "--allow-keys", bad_allow.string()},
      "--allow-keys: allow-list " + bad_allow.string() +
          " line 2 is not a 40-character Z85 public key (the .pub file of "
          "edgesplit-keygen)");
  check_refused({"--model", "a.pt", "--curve-secret", secret.string(), "--allow-keys",
                 (dir / "none.txt").string()},
                "--allow-keys: cannot read allow-list " + (dir / "none.txt").string());
  fs::remove_all(dir);
}

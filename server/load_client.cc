// edgesplit-load: N simulated devices (threads, one ZeroMQ DEALER each) send inference requests to
// one server for T seconds and account for every one of them: a result, an explicit refusal
// (BUSY, SHUTTING_DOWN, ...) or lost (no reply by the end). Prints latency percentiles and, with
// --server-pid, the server's resident memory sampled from /proc during the run, as one JSON object.
// Exit code 0 when no request was lost.
#include <atomic>
#include <chrono>
#include <cxxopts.hpp>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>
#include <unordered_map>
#include <vector>

#include <zmq.hpp>

#include "packing/codec.h"
#include "partitioner/model_graph.h"
#include "partitioner/model_info.h"
#include "transport/curve.h"
#include "transport/protocol.h"

namespace {

using Clock = std::chrono::steady_clock;
using json = nlohmann::json;
using namespace edgesplit;

struct LoadConfig {
  std::string endpoint;
  std::string digest;
  int cut = 0;
  std::vector<std::string> payloads;  // packed crossing tensors, sent with every request
  int in_flight = 1;
  std::chrono::milliseconds duration{3000};
  std::chrono::milliseconds drain{10000};
  std::string server_key;  // CURVE: the server's public key (Z85); empty: plain
};

// What one simulated device saw.
struct ClientResult {
  uint64_t sent = 0, send_failed = 0, unknown_replies = 0, malformed_replies = 0;
  std::map<std::string, uint64_t> by_status;  // replies by wire status name
  std::vector<double> latencies_ms;           // STATUS_OK replies only
  uint64_t lost = 0;                          // sent, never answered
};

void run_client(const LoadConfig& cfg, zmq::context_t& ctx, int index, ClientResult& out) {
  zmq::socket_t s(ctx, zmq::socket_type::dealer);
  s.set(zmq::sockopt::linger, 0);
  s.set(zmq::sockopt::immediate, 1);
  if (!cfg.server_key.empty()) {
    auto pair = transport::generate_curve_keypair();
    if (pair.ok()) {
      s.set(zmq::sockopt::curve_serverkey, cfg.server_key);
      s.set(zmq::sockopt::curve_publickey, pair->public_key);
      s.set(zmq::sockopt::curve_secretkey, pair->secret_key);
    }
  }
  s.connect(cfg.endpoint);
  std::unordered_map<uint64_t, Clock::time_point> pending;
  uint64_t next_id = 1 + (static_cast<uint64_t>(index) << 40);
  const auto start = Clock::now();
  const auto stop_sending = start + cfg.duration;
  const auto give_up = stop_sending + cfg.drain;

  auto send_one = [&]() -> bool {
    wire::Request req;
    req.set_request_id(next_id);
    auto* ir = req.mutable_infer();
    ir->set_model_digest(cfg.digest);
    ir->set_cut(static_cast<uint32_t>(cfg.cut));
    ir->set_top_k(5);
    for (const auto& p : cfg.payloads) ir->add_tensors()->set_packed_bytes(p.size());
    const std::string header = req.SerializeAsString();
    try {
      if (!s.send(zmq::buffer(header), zmq::send_flags::sndmore | zmq::send_flags::dontwait)) {
        return false;
      }
      for (size_t i = 0; i < cfg.payloads.size(); ++i) {
        s.send(zmq::buffer(cfg.payloads[i]),
               i + 1 < cfg.payloads.size() ? zmq::send_flags::sndmore : zmq::send_flags::none);
      }
    } catch (const zmq::error_t&) {
      return false;
    }
    pending[next_id++] = Clock::now();
    ++out.sent;
    return true;
  };

  while (true) {
    const auto now = Clock::now();
    if (now >= give_up || (now >= stop_sending && pending.empty())) break;
    while (now < stop_sending && static_cast<int>(pending.size()) < cfg.in_flight) {
      if (!send_one()) {
        ++out.send_failed;  // not connected yet or queue full: not sent, so not in flight
        break;
      }
    }
    zmq_pollitem_t item{static_cast<void*>(s), 0, ZMQ_POLLIN, 0};
    zmq_poll(&item, 1, pending.empty() ? 5 : 50);
    while (true) {
      zmq::message_t m;
      if (!s.recv(m, zmq::recv_flags::dontwait)) break;
      const auto received = Clock::now();
      while (m.more()) {  // a reply is one frame; drain anything else
        zmq::message_t extra;
        if (!s.recv(extra, zmq::recv_flags::dontwait)) break;
        m.move(extra);
      }
      wire::Reply reply;
      if (!reply.ParseFromArray(m.data(), static_cast<int>(m.size()))) {
        ++out.malformed_replies;
        continue;
      }
      auto it = pending.find(reply.request_id());
      if (it == pending.end()) {
        ++out.unknown_replies;
        continue;
      }
      ++out.by_status[wire::Status_Name(reply.status())];
      if (reply.status() == wire::STATUS_OK) {
        out.latencies_ms.push_back(
            std::chrono::duration<double, std::milli>(received - it->second).count());
      }
      pending.erase(it);
    }
  }
  out.lost = pending.size();
}

double percentile(std::vector<double>& v, double p) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const double rank = p / 100.0 * static_cast<double>(v.size() - 1);
  const size_t lo = static_cast<size_t>(rank);
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (rank - static_cast<double>(lo));
}

// VmRSS of a process in kB, or -1.
long rss_kb(int pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/status");
  std::string key;
  while (f >> key) {
    if (key == "VmRSS:") {
      long kb = -1;
      f >> kb;
      return kb;
    }
    f.ignore(1 << 12, '\n');
  }
  return -1;
}

int usage_error(const std::string& message) {
  std::cerr << "edgesplit-load: " << message << " (see edgesplit-load --help)\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  cxxopts::Options cli("edgesplit-load",
                       "Load test for edgesplit-server: N simulated devices send inference "
                       "requests for T seconds; every request is accounted for.");
  // clang-format off
  cli.add_options()
    ("server", "server endpoint, e.g. tcp://127.0.0.1:5555", cxxopts::value<std::string>())
    ("model", "the TorchScript model the server serves", cxxopts::value<std::string>())
    ("meta", "model metadata JSON (default: beside the model)", cxxopts::value<std::string>()->default_value(""))
    ("cut", "cut id to send (default: the middle cut)", cxxopts::value<int>()->default_value("-1"))
    ("bits", "quantization bits of the payload", cxxopts::value<int>()->default_value("8"))
    ("clients", "simulated devices", cxxopts::value<int>()->default_value("16"))
    ("seconds", "how long to send", cxxopts::value<double>()->default_value("3"))
    ("in-flight", "requests each device keeps in flight", cxxopts::value<int>()->default_value("1"))
    ("drain-ms", "after the run, how long to wait for outstanding replies before calling them lost",
     cxxopts::value<int>()->default_value("10000"))
    ("server-pid", "sample this process's resident memory during the run", cxxopts::value<int>())
    ("server-key", "the server's CURVE public key file (.pub)", cxxopts::value<std::string>())
    ("output", "write the JSON result here instead of stdout", cxxopts::value<std::string>())
    ("h,help", "show this help");
  // clang-format on
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
  if (!args.count("server")) return usage_error("no server given: pass --server tcp://HOST:PORT");
  if (!args.count("model")) return usage_error("no model given: pass --model FILE.pt");
  const int clients = args["clients"].as<int>();
  const double seconds = args["seconds"].as<double>();
  if (clients < 1 || clients > 4096) return usage_error("--clients must be 1..4096");
  if (!(seconds > 0)) return usage_error("--seconds must be positive");

  LoadConfig cfg;
  cfg.endpoint = args["server"].as<std::string>();
  cfg.in_flight = args["in-flight"].as<int>();
  if (cfg.in_flight < 1) return usage_error("--in-flight must be at least 1");
  cfg.duration = std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000));
  cfg.drain = std::chrono::milliseconds(args["drain-ms"].as<int>());
  if (args.count("server-key")) {
    auto key = transport::read_key_file(args["server-key"].as<std::string>());
    if (!key.ok()) return usage_error("--server-key: " + key.status().message());
    cfg.server_key = *key;
  }

  const std::string model_path = args["model"].as<std::string>();
  auto info = partitioner::load_model_info(model_path, args["meta"].as<std::string>());
  partitioner::LoadOptions lo;
  if (info.ok()) lo.input_shape = info->input_shape;
  auto graph = partitioner::ModelGraph::load(model_path, lo);
  if (!graph.ok()) return usage_error(graph.status().message());
  cfg.digest = (*graph)->digest();
  cfg.cut = args["cut"].as<int>();
  if (cfg.cut < 0) cfg.cut = (*graph)->device_cut() / 2;
  if (!(*graph)->has_cut(cfg.cut) || cfg.cut == (*graph)->device_cut()) {
    return usage_error("--cut must be 0.." + std::to_string((*graph)->device_cut() - 1));
  }
  packing::EncodeOptions eo;
  eo.bits = args["bits"].as<int>();
  for (const auto& t : (*graph)->cut(cfg.cut).tensors) {
    std::vector<float> v(static_cast<size_t>(t.elements));
    for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>((i * 7919) % 101) / 50.0f;
    auto packed = packing::encode(v.data(), v.size(), t.shape, eo);
    if (!packed.ok()) return usage_error(packed.status().message());
    cfg.payloads.emplace_back(packed->begin(), packed->end());
  }

  std::atomic<bool> sampling{true};
  std::vector<long> rss;
  std::thread sampler;
  if (args.count("server-pid")) {
    const int pid = args["server-pid"].as<int>();
    sampler = std::thread([&, pid] {
      while (sampling.load()) {
        const long kb = rss_kb(pid);
        if (kb > 0) rss.push_back(kb);
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
    });
  }

  zmq::context_t ctx(2);
  std::vector<ClientResult> results(static_cast<size_t>(clients));
  std::vector<std::thread> threads;
  const auto t0 = Clock::now();
  for (int i = 0; i < clients; ++i) {
    threads.emplace_back([&, i] { run_client(cfg, ctx, i, results[static_cast<size_t>(i)]); });
  }
  for (auto& t : threads) t.join();
  const double wall_s = std::chrono::duration<double>(Clock::now() - t0).count();
  sampling.store(false);
  if (sampler.joinable()) sampler.join();

  ClientResult total;
  for (auto& r : results) {
    total.sent += r.sent;
    total.send_failed += r.send_failed;
    total.unknown_replies += r.unknown_replies;
    total.malformed_replies += r.malformed_replies;
    total.lost += r.lost;
    for (const auto& [k, v] : r.by_status) total.by_status[k] += v;
    total.latencies_ms.insert(total.latencies_ms.end(), r.latencies_ms.begin(),
                              r.latencies_ms.end());
  }
  uint64_t answered = 0;
  for (const auto& [k, v] : total.by_status) answered += v;
  json j;
  j["clients"] = clients;
  j["seconds"] = seconds;
  j["in_flight_per_client"] = cfg.in_flight;
  j["cut"] = cfg.cut;
  j["payload_bytes"] = [&] {
    size_t n = 0;
    for (const auto& p : cfg.payloads) n += p.size();
    return n;
  }();
  j["sent"] = total.sent;
  j["answered"] = answered;
  j["replies"] = total.by_status;
  j["lost"] = total.lost;
  j["unknown_replies"] = total.unknown_replies;
  j["malformed_replies"] = total.malformed_replies;
  j["not_sent_would_block"] = total.send_failed;
  j["ok_per_second"] = wall_s > 0 ? static_cast<double>(total.latencies_ms.size()) / wall_s : 0.0;
  j["latency_ms"] = {{"p50", percentile(total.latencies_ms, 50)},
                     {"p95", percentile(total.latencies_ms, 95)},
                     {"p99", percentile(total.latencies_ms, 99)},
                     {"max", total.latencies_ms.empty() ? 0.0 : total.latencies_ms.back()}};
  if (!rss.empty()) {
    j["server_rss_kb"] = {{"first", rss.front()},
                          {"max", *std::max_element(rss.begin(), rss.end())},
                          {"last", rss.back()},
                          {"samples", rss.size()}};
  }
  const std::string text = j.dump();
  if (args.count("output")) {
    std::ofstream(args["output"].as<std::string>()) << text << '\n';
  } else {
    std::cout << text << '\n';
  }
  return total.lost == 0 ? 0 : 1;
}

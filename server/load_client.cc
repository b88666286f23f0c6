// edgesplit-load: N simulated devices (threads, one ZeroMQ DEALER each) send inference requests to
// one server for T seconds and account for every one of them: a result, an explicit refusal
// (BUSY, SHUTTING_DOWN, DEADLINE_EXCEEDED, ...) or lost (no reply by the end). Closed loop (each
// device keeps --in-flight requests out) or open loop (--rate: Poisson arrivals, as independent
// devices send). Requests may carry a deadline and a priority; devices may alternate between cuts.
// Prints offered and answered rates, latency percentiles, the server's batch sizes and queue waits
// and, with --server-pid, the server's resident memory sampled from /proc, as one JSON object.
// Exit code 0 when no request was lost.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cxxopts.hpp>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include <zmq.hpp>

#include "packing/codec.h"
#include "packing/int_list.h"
#include "partitioner/model_graph.h"
#include "partitioner/model_info.h"
#include "transport/curve.h"
#include "transport/protocol.h"

namespace {

using Clock = std::chrono::steady_clock;
using json = nlohmann::json;
using namespace edgesplit;

// One cut's request: its id and packed crossing tensors, sent with every request for it.
struct CutPayload {
  int cut = 0;
  std::vector<std::string> payloads;
};

struct LoadConfig {
  std::string endpoint;
  std::string digest;
  std::vector<CutPayload> cuts;  // device i sends cuts[i % size]
  int in_flight = 1;
  int clients = 1;
  double rate = 0;              // > 0: open loop, this many requests/s over all devices (Poisson)
  int max_pending = 64;         // open loop: a device sends no more while this many are unanswered
  int deadline_ms = 0;          // > 0: each request's deadline
  int deadline_margin_ms = 10;  // sent as deadline_us: the deadline less this (transfer times)
  std::vector<int> priorities{0};  // device i sends priorities[i % size]
  uint64_t seed = 20261202;
  Clock::time_point t0;   // when the run started (every device's sending window starts here)
  double warmup_s = 0.5;  // OK replies before t0 + warmup_s do not count towards the rate
  std::chrono::milliseconds duration{3000};
  std::chrono::milliseconds drain{10000};
  std::string server_key;     // CURVE: the server's public key (Z85); empty: plain
  std::string client_secret;  // CURVE: every device's secret key (one device, many connections);
                              // empty: a fresh key per simulated device
};

// What one simulated device saw.
struct ClientResult {
  uint64_t sent = 0, send_failed = 0, unknown_replies = 0, malformed_replies = 0;
  std::map<std::string, uint64_t> by_status;  // replies by wire status name
  std::vector<double> latencies_ms;           // STATUS_OK replies only
  std::vector<double> expired_ms;             // DEADLINE_EXCEEDED replies: how soon they came
  std::vector<double> queue_ms;               // the server's queue time of each OK reply
  uint64_t batch_rows = 0;                    // sum of the OK replies' batch sizes
  std::map<uint32_t, uint64_t> batch_sizes;   // OK replies by the size of the batch they ran in
  // The server's compute time of the batch each OK reply ran in, by (cut, batch size): the sum
  // (ms) and the replies.
  std::map<std::pair<int, uint32_t>, std::pair<double, uint64_t>> compute_by_batch;
  uint64_t late_ok = 0;       // OK replies received after the request's deadline
  uint64_t ok_in_window = 0;  // OK replies received between the warm-up and the end of sending
  uint64_t lost = 0;          // sent, never answered (no deadline)
  uint64_t timed_out = 0;     // sent with a deadline, unanswered
  int priority = 0;
};

void run_client(const LoadConfig& cfg, zmq::context_t& ctx, int index, ClientResult& out) {
  zmq::socket_t s(ctx, zmq::socket_type::dealer);
  s.set(zmq::sockopt::linger, 0);
  s.set(zmq::sockopt::immediate, 1);
  if (!cfg.server_key.empty()) {
    auto pair = transport::generate_curve_keypair();
    if (!cfg.client_secret.empty()) {
      auto pub = transport::curve_public_key(cfg.client_secret);
      if (pub.ok()) pair = transport::CurveKeyPair{*pub, cfg.client_secret};
    }
    if (pair.ok()) {
      s.set(zmq::sockopt::curve_serverkey, cfg.server_key);
      s.set(zmq::sockopt::curve_publickey, pair->public_key);
      s.set(zmq::sockopt::curve_secretkey, pair->secret_key);
    }
  }
  s.connect(cfg.endpoint);
  std::unordered_map<uint64_t, Clock::time_point> pending;
  uint64_t next_id = 1 + (static_cast<uint64_t>(index) << 40);
  const CutPayload& cut = cfg.cuts[static_cast<size_t>(index) % cfg.cuts.size()];
  out.priority = cfg.priorities[static_cast<size_t>(index) % cfg.priorities.size()];
  const int cut_id = cut.cut;
  const auto start = cfg.t0;
  const auto stop_sending = start + cfg.duration;
  const auto window_start =
      start + std::chrono::microseconds(static_cast<int64_t>(cfg.warmup_s * 1e6));
  // With a deadline, nothing is awaited past the last request's deadline (and a second of grace).
  const auto give_up =
      stop_sending + (cfg.deadline_ms > 0
                          ? std::min<std::chrono::milliseconds>(
                                cfg.drain, std::chrono::milliseconds(cfg.deadline_ms + 1000))
                          : cfg.drain);
  const auto deadline = std::chrono::milliseconds(cfg.deadline_ms);
  // Open loop: exponential gaps between this device's sends, from its own seeded generator.
  std::mt19937_64 rng(cfg.seed + static_cast<uint64_t>(index));
  const double per_device_rate = cfg.rate / static_cast<double>(std::max(1, cfg.clients));
  std::exponential_distribution<double> gap(per_device_rate > 0 ? per_device_rate : 1.0);
  auto next_send = start + std::chrono::microseconds(static_cast<int64_t>(gap(rng) * 1e6));

  auto send_one = [&]() -> bool {
    wire::Request req;
    req.set_request_id(next_id);
    auto* ir = req.mutable_infer();
    ir->set_model_digest(cfg.digest);
    ir->set_cut(static_cast<uint32_t>(cut.cut));
    ir->set_top_k(5);
    if (cfg.deadline_ms > 0) {
      // What a device does: the server's budget is the deadline less the transfers both ways.
      const int budget_ms = std::max(1, cfg.deadline_ms - cfg.deadline_margin_ms);
      ir->set_deadline_us(static_cast<uint64_t>(budget_ms) * 1000);
    }
    ir->set_priority(static_cast<uint32_t>(out.priority));
    for (const auto& p : cut.payloads) ir->add_tensors()->set_packed_bytes(p.size());
    const std::string header = req.SerializeAsString();
    try {
      if (!s.send(zmq::buffer(header), zmq::send_flags::sndmore | zmq::send_flags::dontwait)) {
        return false;
      }
      for (size_t i = 0; i < cut.payloads.size(); ++i) {
        s.send(zmq::buffer(cut.payloads[i]),
               i + 1 < cut.payloads.size() ? zmq::send_flags::sndmore : zmq::send_flags::none);
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
    int wait_ms = pending.empty() ? 5 : 50;
    if (cfg.rate > 0) {
      // Every arrival due by now is sent (or counted as not sent when too many are pending).
      while (next_send <= now && next_send < stop_sending) {
        if (static_cast<int>(pending.size()) >= cfg.max_pending || !send_one()) ++out.send_failed;
        next_send += std::chrono::microseconds(static_cast<int64_t>(gap(rng) * 1e6));
      }
      if (next_send < stop_sending) {
        const auto until = next_send - Clock::now();
        if (until < std::chrono::milliseconds(1)) {
          // zmq_poll counts whole milliseconds: sleep out the rest rather than poll it away in a
          // loop that takes a core from the server it measures.
          std::this_thread::sleep_for(until);
          wait_ms = 0;
        } else {
          wait_ms = static_cast<int>(std::min<int64_t>(
              std::chrono::duration_cast<std::chrono::milliseconds>(until).count(), 50));
        }
      }
    } else {
      while (now < stop_sending && static_cast<int>(pending.size()) < cfg.in_flight) {
        if (!send_one()) {
          ++out.send_failed;  // not connected yet or queue full: not sent, so not in flight
          break;
        }
      }
    }
    zmq_pollitem_t item{static_cast<void*>(s), 0, ZMQ_POLLIN, 0};
    zmq_poll(&item, 1, wait_ms);
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
        if (reply.has_infer()) {
          out.queue_ms.push_back(static_cast<double>(reply.infer().queue_us()) / 1000.0);
          out.batch_rows += reply.infer().batch_size();
          ++out.batch_sizes[reply.infer().batch_size()];
          auto& c = out.compute_by_batch[{cut_id, reply.infer().batch_size()}];
          c.first += static_cast<double>(reply.infer().compute_us()) / 1000.0;
          ++c.second;
        }
        if (cfg.deadline_ms > 0 && received > it->second + deadline) ++out.late_ok;
        if (received >= window_start && received <= stop_sending) ++out.ok_in_window;
      } else if (reply.status() == wire::STATUS_DEADLINE_EXCEEDED) {
        out.expired_ms.push_back(
            std::chrono::duration<double, std::milli>(received - it->second).count());
      }
      pending.erase(it);
    }
  }
  // With a deadline, the device has given up on what is still unanswered (as a device would, and
  // finished those frames itself); without one, they are lost.
  (cfg.deadline_ms > 0 ? out.timed_out : out.lost) = pending.size();
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
    ("cut", "cut id to send (default: the middle cut); several, comma-separated: device i sends the "
     "i-th (modulo)", cxxopts::value<std::string>()->default_value("-1"))
    ("bits", "quantization bits of the payload", cxxopts::value<int>()->default_value("8"))
    ("clients", "simulated devices", cxxopts::value<int>()->default_value("16"))
    ("seconds", "how long to send", cxxopts::value<double>()->default_value("3"))
    ("in-flight", "closed loop: requests each device keeps in flight", cxxopts::value<int>()->default_value("1"))
    ("rate", "open loop: requests per second over all devices, Poisson arrivals (0: closed loop)",
     cxxopts::value<double>()->default_value("0"))
    ("max-pending", "open loop: a device skips an arrival while this many of its requests are "
     "unanswered", cxxopts::value<int>()->default_value("64"))
    ("deadline-ms", "each request's deadline (0: none); OK replies after it are counted as late",
     cxxopts::value<int>()->default_value("0"))
    ("deadline-margin-ms", "the deadline sent to the server is --deadline-ms less this (the "
     "transfers there and back, as a device subtracts them)", cxxopts::value<int>()->default_value("10"))
    ("priority", "priority class of the requests; several, comma-separated: device i sends the "
     "i-th (modulo)", cxxopts::value<std::string>()->default_value("0"))
    ("start-at-unix-ms", "set up now (the model's cut shapes, the payloads) and start the devices at "
     "this wall-clock time, in ms since the epoch (0: at once)",
     cxxopts::value<int64_t>()->default_value("0"))
    ("warmup-s", "OK replies in the first seconds do not count towards ok_per_second",
     cxxopts::value<double>()->default_value("0.5"))
    ("seed", "seed of the arrival times", cxxopts::value<uint64_t>()->default_value("20261202"))
    ("drain-ms", "after the run, how long to wait for outstanding replies before calling them lost",
     cxxopts::value<int>()->default_value("10000"))
    ("server-pid", "sample this process's resident memory during the run", cxxopts::value<int>())
    ("server-key", "the server's CURVE public key file (.pub)", cxxopts::value<std::string>())
    ("key", "with --server-key: every simulated device uses this CURVE secret key file (one device "
     "opening many connections; default: a fresh key each)", cxxopts::value<std::string>())
    ("output", "write the JSON result here instead of stdout", cxxopts::value<std::string>())
    ("latencies", "also write every OK reply's latency (ms, ascending) as latencies_ms_all, so that "
     "percentiles can be taken over several runs together")
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
  cfg.clients = clients;
  cfg.in_flight = args["in-flight"].as<int>();
  if (cfg.in_flight < 1) return usage_error("--in-flight must be at least 1");
  cfg.rate = args["rate"].as<double>();
  if (!(cfg.rate >= 0)) return usage_error("--rate must be 0 or more");
  cfg.max_pending = args["max-pending"].as<int>();
  if (cfg.max_pending < 1) return usage_error("--max-pending must be at least 1");
  cfg.deadline_ms = args["deadline-ms"].as<int>();
  if (cfg.deadline_ms < 0) return usage_error("--deadline-ms must be 0 or more");
  cfg.seed = args["seed"].as<uint64_t>();
  cfg.deadline_margin_ms = args["deadline-margin-ms"].as<int>();
  if (cfg.deadline_margin_ms < 0) return usage_error("--deadline-margin-ms must be 0 or more");
  cfg.warmup_s = args["warmup-s"].as<double>();
  if (!(cfg.warmup_s >= 0) || cfg.warmup_s >= seconds) {
    return usage_error("--warmup-s must be 0 or more and less than --seconds");
  }
  auto priorities = parse_int_list(args["priority"].as<std::string>());
  if (!priorities || priorities->empty()) {
    return usage_error("--priority takes classes separated by commas, as 0,1");
  }
  for (int p : *priorities) {
    if (p < 0) return usage_error("--priority classes must be 0 or more");
  }
  cfg.priorities = *priorities;
  cfg.duration = std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000));
  cfg.drain = std::chrono::milliseconds(args["drain-ms"].as<int>());
  if (args.count("server-key")) {
    auto key = transport::read_key_file(args["server-key"].as<std::string>());
    if (!key.ok()) return usage_error("--server-key: " + key.status().message());
    cfg.server_key = *key;
  }
  if (args.count("key")) {
    if (cfg.server_key.empty()) return usage_error("--key needs --server-key");
    auto key = transport::read_key_file(args["key"].as<std::string>());
    if (!key.ok()) return usage_error("--key: " + key.status().message());
    cfg.client_secret = *key;
  }

  const std::string model_path = args["model"].as<std::string>();
  auto info = partitioner::load_model_info(model_path, args["meta"].as<std::string>());
  partitioner::LoadOptions lo;
  if (info.ok()) lo.input_shape = info->input_shape;
  auto graph = partitioner::ModelGraph::load(model_path, lo);
  if (!graph.ok()) return usage_error(graph.status().message());
  cfg.digest = (*graph)->digest();
  auto cut_ids = parse_int_list(args["cut"].as<std::string>());
  if (!cut_ids || cut_ids->empty()) return usage_error("--cut takes cut ids separated by commas");
  packing::EncodeOptions eo;
  eo.bits = args["bits"].as<int>();
  for (int cut : *cut_ids) {
    if (cut < 0) cut = (*graph)->device_cut() / 2;
    if (!(*graph)->has_cut(cut) || cut == (*graph)->device_cut()) {
      return usage_error("--cut must be 0.." + std::to_string((*graph)->device_cut() - 1));
    }
    CutPayload cp;
    cp.cut = cut;
    for (const auto& t : (*graph)->cut(cut).tensors) {
      std::vector<float> v(static_cast<size_t>(t.elements));
      for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>((i * 7919) % 101) / 50.0f;
      auto packed = packing::encode(v.data(), v.size(), t.shape, eo);
      if (!packed.ok()) return usage_error(packed.status().message());
      cp.payloads.emplace_back(packed->begin(), packed->end());
    }
    cfg.cuts.push_back(std::move(cp));
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

  const int64_t start_at_ms = args["start-at-unix-ms"].as<int64_t>();
  if (start_at_ms < 0) return usage_error("--start-at-unix-ms must be 0 (at once) or a time");
  if (start_at_ms > 0) {
    std::this_thread::sleep_until(
        std::chrono::system_clock::time_point(std::chrono::milliseconds(start_at_ms)));
  }
  zmq::context_t ctx(2);
  std::vector<ClientResult> results(static_cast<size_t>(clients));
  std::vector<std::thread> threads;
  const auto t0 = Clock::now();
  cfg.t0 = t0;
  for (int i = 0; i < clients; ++i) {
    threads.emplace_back([&, i] { run_client(cfg, ctx, i, results[static_cast<size_t>(i)]); });
  }
  // A caller that starts other work once the load is on waits for this line.
  std::cerr << "edgesplit-load: " << clients << " devices started" << std::endl;
  for (auto& t : threads) t.join();
  const double wall_s = std::chrono::duration<double>(Clock::now() - t0).count();
  sampling.store(false);
  if (sampler.joinable()) sampler.join();

  ClientResult total;
  std::map<int, ClientResult> by_priority;
  for (auto& r : results) {
    ClientResult& p = by_priority[r.priority];
    p.sent += r.sent;
    for (const auto& [k, v] : r.by_status) p.by_status[k] += v;
    p.latencies_ms.insert(p.latencies_ms.end(), r.latencies_ms.begin(), r.latencies_ms.end());
    total.queue_ms.insert(total.queue_ms.end(), r.queue_ms.begin(), r.queue_ms.end());
    total.batch_rows += r.batch_rows;
    for (const auto& [size, n] : r.batch_sizes) total.batch_sizes[size] += n;
    for (const auto& [key, c] : r.compute_by_batch) {
      total.compute_by_batch[key].first += c.first;
      total.compute_by_batch[key].second += c.second;
    }
    total.late_ok += r.late_ok;
    total.ok_in_window += r.ok_in_window;
    total.sent += r.sent;
    total.send_failed += r.send_failed;
    total.unknown_replies += r.unknown_replies;
    total.malformed_replies += r.malformed_replies;
    total.lost += r.lost;
    total.timed_out += r.timed_out;
    for (const auto& [k, v] : r.by_status) total.by_status[k] += v;
    total.latencies_ms.insert(total.latencies_ms.end(), r.latencies_ms.begin(),
                              r.latencies_ms.end());
    total.expired_ms.insert(total.expired_ms.end(), r.expired_ms.begin(), r.expired_ms.end());
  }
  uint64_t answered = 0;
  for (const auto& [k, v] : total.by_status) answered += v;
  json j;
  j["clients"] = clients;
  j["seconds"] = seconds;
  j["in_flight_per_client"] = cfg.in_flight;
  json cuts = json::array();
  for (const auto& c : cfg.cuts) {
    size_t n = 0;
    for (const auto& p : c.payloads) n += p.size();
    cuts.push_back({{"cut", c.cut}, {"payload_bytes", n}});
  }
  j["cuts"] = cuts;
  j["mode"] = cfg.rate > 0 ? "open" : "closed";
  j["offered_per_second"] = cfg.rate > 0 ? cfg.rate : static_cast<double>(total.sent) / seconds;
  j["sent_per_second"] = static_cast<double>(total.sent) / seconds;
  j["deadline_ms"] = cfg.deadline_ms;
  j["late_ok"] = total.late_ok;
  const double ok_count = static_cast<double>(total.latencies_ms.size());
  j["mean_batch_size"] = ok_count > 0 ? static_cast<double>(total.batch_rows) / ok_count : 0.0;
  // Per batch size, how many OK replies ran in a batch of that size (weighted by request).
  json sizes = json::object();
  for (const auto& [size, n] : total.batch_sizes) sizes[std::to_string(size)] = n;
  j["batch_size_replies"] = sizes;
  // Per cut and batch size: the mean compute time of the batches OK replies ran in (a mean over
  // replies, so each batch counts once per request) and that time per request.
  json compute = json::object();
  for (const auto& [key, c] : total.compute_by_batch) {
    const double batch_ms = c.first / static_cast<double>(c.second);
    compute[std::to_string(key.first)][std::to_string(key.second)] = {
        {"replies", c.second},
        {"batch_ms", batch_ms},
        {"row_ms", batch_ms / static_cast<double>(std::max<uint32_t>(1, key.second))}};
  }
  j["compute_by_batch"] = compute;
  double queue_sum = 0;
  for (double q : total.queue_ms) queue_sum += q;
  j["server_queue_ms"] = {
      {"mean",
       total.queue_ms.empty() ? 0.0 : queue_sum / static_cast<double>(total.queue_ms.size())},
      {"p50", percentile(total.queue_ms, 50)},
      {"p99", percentile(total.queue_ms, 99)}};
  if (by_priority.size() > 1) {
    json per = json::object();
    for (auto& [prio, r] : by_priority) {
      per[std::to_string(prio)] = {
          {"sent", r.sent},
          {"replies", r.by_status},
          {"ok_per_second", static_cast<double>(r.latencies_ms.size()) / seconds},
          {"latency_ms",
           {{"p50", percentile(r.latencies_ms, 50)}, {"p99", percentile(r.latencies_ms, 99)}}}};
    }
    j["by_priority"] = per;
  }
  j["sent"] = total.sent;
  j["answered"] = answered;
  j["replies"] = total.by_status;
  j["lost"] = total.lost;
  j["unanswered_by_deadline"] = total.timed_out;
  j["unknown_replies"] = total.unknown_replies;
  j["malformed_replies"] = total.malformed_replies;
  j["not_sent_would_block"] = total.send_failed;
  // Answered per second: OK replies received while sending, after the warm-up.
  j["ok_per_second"] =
      static_cast<double>(total.ok_in_window) / std::max(1e-3, seconds - cfg.warmup_s);
  j["warmup_seconds"] = cfg.warmup_s;
  j["wall_seconds"] = wall_s;
  j["latency_ms"] = {{"p50", percentile(total.latencies_ms, 50)},
                     {"p95", percentile(total.latencies_ms, 95)},
                     {"p99", percentile(total.latencies_ms, 99)},
                     {"max", total.latencies_ms.empty() ? 0.0 : total.latencies_ms.back()}};
  // How soon a DEADLINE_EXCEEDED came after its request was sent: the time its device lost
  // before finishing the frame itself.
  j["expired_reply_ms"] = {{"p50", percentile(total.expired_ms, 50)},
                           {"p99", percentile(total.expired_ms, 99)}};
  if (args.count("latencies")) {
    // Sorted by the percentiles above; 10 us steps keep the file small.
    json all = json::array();
    for (double ms : total.latencies_ms) all.push_back(std::round(ms * 100.0) / 100.0);
    j["latencies_ms_all"] = all;
  }
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

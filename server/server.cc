#include "server/server.h"

#include <spdlog/spdlog.h>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <thread>

#include "partitioner/model_graph.h"
#include "partitioner/model_info.h"
#include "profiles/exits.h"
#include "profiles/profile.h"
#include "server/batcher.h"
#include "server/client_table.h"
#include "server/http_endpoint.h"
#include "server/memory_budget.h"
#include "server/request_check.h"
#include "server/tail_executor.h"
#include "transport/curve.h"

namespace edgesplit::server {
namespace {

using Clock = std::chrono::steady_clock;
constexpr const char* kReplyEndpoint = "inproc://edgesplit-replies";
constexpr const char* kMonitorEndpoint = "inproc://edgesplit-router-monitor";

struct ServedModel {
  ModelSignature signature;
  std::shared_ptr<partitioner::ModelGraph> graph;
  std::optional<partitioner::ModelInfo> info;  // needed to decode JPEG inputs
  std::vector<float> tail_ms;                  // per cut, from the server's profile (may be empty)
  std::map<int, std::vector<float>> batch_tail_ms;  // batch size -> per cut, from the profile
  // Per cut: whether its tail runs batches (checked at load when batching is on; else false).
  std::vector<bool> batchable;
  // Per cut: the largest batch formed there where the profile caps it (batch_caps; 0: none).
  std::vector<size_t> batch_caps;
  // Ids of the entropy-coding tables of the server's profile (packing/entropy_codec.h), which it
  // decodes; the handshake lists them so that devices only send frames coded with these.
  std::vector<uint64_t> codec_tables;
  std::shared_ptr<const ServerExits> exits;  // --exits for this model; null: none
};

// One queued inference: the validated request with its payload frames.
struct Job {
  transport::IncomingRequest request;
  const ServedModel* model = nullptr;
  Clock::time_point enqueued;
  GoneFlag gone;  // set by the I/O thread when the device has disconnected
  std::optional<Clock::time_point> deadline;
  MemoryBudget::Lease bytes;  // the request's share of --max-queued-bytes, given back with it
};

int64_t micros(Clock::duration d) {
  return std::chrono::duration_cast<std::chrono::microseconds>(d).count();
}

int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now().time_since_epoch())
      .count();
}

}  // namespace

bool is_local_endpoint(const std::string& endpoint) {
  if (endpoint.rfind("inproc://", 0) == 0 || endpoint.rfind("ipc://", 0) == 0) return true;
  const std::string tcp = "tcp://";
  if (endpoint.rfind(tcp, 0) != 0) return false;
  const std::string rest = endpoint.substr(tcp.size());
  return rest.rfind("127.", 0) == 0 || rest.rfind("localhost:", 0) == 0 ||
         rest.rfind("[::1]:", 0) == 0 || rest.rfind("lo:", 0) == 0;
}

struct InferenceServer::Impl {
  ServerOptions options;
  zmq::context_t context{1};
  std::unique_ptr<transport::ZapHandler> zap;  // after context: destroyed before it
  zmq::socket_t router;
  zmq::socket_t replies;  // PULL: workers' replies, forwarded by the I/O thread
  zmq::socket_t monitor;  // PAIR: the router's ACCEPTED/DISCONNECTED events
  std::string endpoint;
  std::map<std::string, ServedModel> models;             // by digest
  ModelCatalog catalog;                                  // the same, without LibTorch
  packing::CodecTableSet codec_tables{size_t{1} << 16};  // every served model's, by id
  packing::DecodeLimits decode_limits;  // options.decode_limits, knowing codec_tables
  ServerMetrics metrics;
  std::unique_ptr<MemoryBudget> budget;  // --max-queued-bytes, shared by the I/O thread and workers
  ClientTable clients;                   // I/O thread only
  std::atomic<bool> stop_requested{false};
  std::atomic<bool> hurry_requested{false};
  std::atomic<bool> accepting{false};
  std::atomic<int> worker_failures{0};
  std::atomic<int64_t> loop_beat_ms{0};  // last turn of the I/O loop (for /healthz)
  std::atomic<bool> idle{true};

  std::unique_ptr<BatchQueue<Job>> queue;
  std::atomic<int> running_jobs{0};
  std::vector<std::thread> workers;
  std::atomic<int> workers_warming{0};  // workers still running their warm-up (warm_up)
  std::unique_ptr<HttpEndpoint> http;   // last: destroyed first, its callbacks read the above

  size_t queue_length() { return queue ? queue->size() : 0; }

  MetricsGauges gauges() {
    MetricsGauges g;
    g.queue_length = queue_length();
    g.queue_wait_ms = queue ? queue->expected_wait_ms() : 0;
    g.queue_capacity = options.queue_capacity;
    g.running_jobs = static_cast<size_t>(std::max(0, running_jobs.load()));
    g.clients_in_flight = clients_in_flight.load();
    if (budget) {
      g.queued_bytes = budget->used();
      g.queued_bytes_limit = budget->limit();
    }
    g.ready = accepting.load() && workers_warming.load() == 0;
    g.curve = !options.router.curve_secret_key.empty();
    const partitioner::TensorCacheStats cache = partitioner::tensor_cache_stats();
    g.tensor_cache_bytes = cache.cached_bytes;
    g.tensor_cache_limit = cache.limit_bytes;
    g.tensor_cache_hits = cache.hits;
    g.tensor_cache_misses = cache.misses;
    if (zap) {
      g.zap_accepted = zap->accepted();
      g.zap_denied = zap->denied();
    }
    return g;
  }
  std::atomic<size_t> clients_in_flight{0};  // mirror of clients.size() for other threads

  // Hands one reply (or, with an empty body, "no reply": the device has gone or the result came
  // too late) to the I/O thread. False when the context is going away.
  bool hand_over(zmq::socket_t& push, const std::string& identity, const std::string& body) {
    try {
      zmq::message_t id(identity.data(), identity.size());
      push.send(id, zmq::send_flags::sndmore);
      push.send(zmq::buffer(body), zmq::send_flags::none);
    } catch (const zmq::error_t& e) {
      // The context is going away (the process is ending): nothing left to reply to.
      if (e.num() == ETERM) return false;
      spdlog::error("a worker could not hand over a reply: {}", e.what());
    }
    return true;
  }

  // Runs every served model whole (the tail of cut 0) options.warmup_runs times on zeros, on this
  // worker's thread. A thread's first tail is slow at any cut, even with every tail built at load,
  // and a tail with larger activations than any before it is slow again: on loopback (MobileNetV2,
  // one intra-op thread) a fresh server's first request at cut 21 took a median of 17.3 ms of
  // compute, 4.9 ms after this warm-up, and a first request at cut 0 after cuts 21 and 37 took
  // 48.4 ms against 9.5 (docs/server.md). Requests that come meanwhile wait in the queue.
  // With batching on, it also runs a batch of each preferred size and of --max-batch, each at the
  // shallowest cut whose tail forms batches of that size (cut 0 unless the profile caps its
  // batches lower: there a large batch costs more per request): a thread's first batch of a size
  // is slow again. MobileNetV2 at cut 21, batches of 8, one intra-op thread: the first batch's
  // slowest reply took a median of 61.8 ms after the batch-1 warm-up alone and 40.1 ms with the
  // sizes warmed too, the later batches' 39.0 ms; ready 1.5 s later (docs/server.md).
  void warm_up() {
    const auto t0 = Clock::now();
    std::set<size_t> sizes = {1, options.max_batch};
    sizes.insert(options.preferred_batch.begin(), options.preferred_batch.end());
    std::string warmed;  // per model, its batch sizes warmed, and where not at cut 0, the cut
    for (const auto& [digest, model] : models) {
      std::string batches;
      for (size_t batch : sizes) {
        if (options.warmup_runs == 0 || stop_requested.load()) break;
        const int cut = warm_up_cut(model.batchable, model.batch_caps, batch);
        if (cut < 0) continue;
        Result<double> ms =
            warm_tail(*model.graph, cut, options.warmup_runs, static_cast<int>(batch));
        if (!ms.ok()) {
          spdlog::warn(
              "a worker's warm-up of {} (batch {}) failed ({}): its first request pays "
              "for it",
              model.signature.name, batch, ms.status().message());
          continue;
        }
        batches += (batches.empty() ? "" : ", ") + std::to_string(batch) +
                   (cut == 0 ? std::string() : " at cut " + std::to_string(cut));
      }
      warmed += (warmed.empty() ? "" : "; ") + model.signature.name + ": batch " + batches;
    }
    const double ms = micros(Clock::now() - t0) / 1000.0;
    if (workers_warming.fetch_sub(1) == 1 && options.warmup_runs > 0) {
      spdlog::info("workers warm: each ran every model {} times ({}; {:.0f} ms for the last)",
                   options.warmup_runs, warmed, ms);
    }
  }

  void worker_loop() {
    zmq::socket_t push(context, zmq::socket_type::push);
    push.set(zmq::sockopt::linger, 1000);
    push.connect(kReplyEndpoint);
    warm_up();
    BatchQueue<Job>::Batch batch;
    while (queue->next(batch)) {
      const int taken = static_cast<int>(batch.items.size() + batch.expired.size());
      running_jobs.fetch_add(taken);
      bool alive = true;
      for (Job& job : batch.expired) {
        wire::Reply reply;
        const bool answer = expire(job, &reply);
        if (answer) metrics.count_reply(reply.status());
        alive = hand_over(push, job.request.identity,
                          answer ? reply.SerializeAsString() : std::string()) &&
                alive;
      }
      if (!batch.items.empty()) alive = run_batch(push, batch) && alive;
      running_jobs.fetch_sub(taken);
      if (!alive) return;
    }
  }

  // Counts an expired job; true with its DEADLINE_EXCEEDED reply when the deadline is still ahead
  // (after it, the device has finished the frame itself: no reply).
  bool expire(const Job& job, wire::Reply* reply) {
    metrics.expired++;
    if (job.deadline && Clock::now() > *job.deadline) return false;
    *reply = transport::make_error_reply(
        job.request.request.request_id(), wire::STATUS_DEADLINE_EXCEEDED,
        "the request's deadline would pass before its tail could run: finish this frame locally");
    return true;
  }

  // I/O thread: answers queued jobs whose deadline cannot be met while every worker is busy.
  void sweep_expired() {
    for (Job& job : queue->take_expired()) {
      release(job.request.identity);
      wire::Reply reply;
      if (expire(job, &reply)) reply_to(job.request.identity, reply);
    }
  }

  // Runs a batch (one tail run, or one per request when the cut's tail does not batch) and hands
  // every reply over.
  bool run_batch(zmq::socket_t& push, BatchQueue<Job>::Batch& batch) {
    std::vector<Job*> live;
    bool alive = true;
    for (Job& job : batch.items) {
      if (job.gone->load()) {
        metrics.dropped_gone++;
        alive = hand_over(push, job.request.identity, std::string()) && alive;
      } else {
        live.push_back(&job);
      }
    }
    if (live.empty()) return alive;
    const ServedModel& model = *live.front()->model;
    const int cut = static_cast<int>(live.front()->request.request.infer().cut());
    const bool together = live.size() > 1 && static_cast<size_t>(cut) < model.batchable.size() &&
                          model.batchable[static_cast<size_t>(cut)];
    std::vector<std::vector<Job*>> runs;
    if (together) {
      runs.push_back(live);
    } else {
      for (Job* j : live) runs.push_back({j});
    }
    for (auto& run : runs) {
      const auto started = Clock::now();
      const size_t queue_left = queue_length();
      std::vector<wire::Reply> replies;
      try {
        replies = execute(run, started, queue_left);
      } catch (const std::exception& e) {
        // Whatever a tail throws becomes an error reply; the worker keeps serving.
        replies.clear();
        for (Job* j : run) {
          replies.push_back(
              transport::make_error_reply(j->request.request.request_id(), wire::STATUS_INTERNAL,
                                          std::string("the server failed: ") + e.what()));
        }
        if (worker_failures.fetch_add(1) < 5) spdlog::error("a tail failed: {}", e.what());
      }
      const auto finished = Clock::now();
      queue->record_batch_time(
          batch.key, std::chrono::duration<double, std::milli>(finished - started).count(),
          run.size());
      for (size_t i = 0; i < run.size(); ++i) {
        Job& job = *run[i];
        // No reply after the deadline: the device has finished the frame itself by now.
        if (job.deadline && finished > *job.deadline) {
          metrics.late_dropped++;
          alive = hand_over(push, job.request.identity, std::string()) && alive;
          continue;
        }
        metrics.count_reply(replies[i].status());
        alive = hand_over(push, job.request.identity, replies[i].SerializeAsString()) && alive;
      }
    }
    return alive;
  }

  // The tail of every job of `run` (same model and cut) as one batch, and their replies in order.
  std::vector<wire::Reply> execute(const std::vector<Job*>& run, Clock::time_point started,
                                   size_t queue_left) {
    const ServedModel& model = *run.front()->model;
    const int cut = static_cast<int>(run.front()->request.request.infer().cut());
    std::vector<BatchRequest> requests;
    for (Job* job : run) {
      metrics.queue_seconds.observe(std::chrono::duration<double>(started - job->enqueued).count());
      const wire::InferRequest& req = job->request.request.infer();
      BatchRequest br;
      for (const auto& m : job->request.payloads) {
        br.payloads.push_back({static_cast<const uint8_t*>(m.data()), m.size()});
      }
      for (const auto& t : req.tensors()) br.jpeg = br.jpeg || t.encoding() == wire::TENSOR_JPEG;
      br.top_k = static_cast<int>(req.top_k());
      br.want_logits = req.want_logits();
      br.exit_threshold = req.exit_threshold();
      requests.push_back(std::move(br));
    }
    if (options.slow_tail.count() > 0) std::this_thread::sleep_for(options.slow_tail);
    auto outcomes = run_tail_batch(*model.graph, model.info ? &*model.info : nullptr, cut, requests,
                                   decode_limits, model.exits.get());
    metrics.batches++;
    metrics.batch_size.observe(static_cast<double>(run.size()));
    std::vector<wire::Reply> replies;
    bool computed = false;
    for (size_t i = 0; i < run.size(); ++i) {
      const Job& job = *run[i];
      const uint64_t id = job.request.request.request_id();
      const Result<TailOutcome>& outcome = outcomes[i];
      if (!outcome.ok()) {
        const Status& s = outcome.status();
        if (s.code() == StatusCode::kMalformed || s.code() == StatusCode::kNotFound) {
          // kNotFound: coded with a table this server does not have (the device then stops
          // choosing that encoding).
          metrics.malformed++;
          spdlog::debug("request {}: {}", id, s.message());
          replies.push_back(transport::make_error_reply(id, wire::STATUS_MALFORMED, s.message()));
        } else if (s.code() == StatusCode::kResourceExhausted) {
          metrics.too_large++;
          replies.push_back(transport::make_error_reply(id, wire::STATUS_TOO_LARGE, s.message()));
        } else {
          spdlog::error("request {}: {}", id, s.message());
          replies.push_back(transport::make_error_reply(id, wire::STATUS_INTERNAL, s.message()));
        }
        continue;
      }
      metrics.unpack_seconds.observe(static_cast<double>(outcome->unpack_us) / 1e6);
      if (!computed) {
        metrics.compute_seconds.observe(static_cast<double>(outcome->compute_us) / 1e6);
        computed = true;
      }
      wire::Reply reply;
      reply.set_request_id(id);
      reply.set_status(wire::STATUS_OK);
      wire::InferReply* ir = reply.mutable_infer();
      for (const auto& c : outcome->top) {
        auto* cs = ir->add_top();
        cs->set_index(static_cast<uint32_t>(c.index));
        cs->set_score(c.score);
      }
      for (float v : outcome->logits) ir->add_logits(v);
      ir->set_queue_us(static_cast<uint64_t>(micros(started - job.enqueued)));
      ir->set_unpack_us(static_cast<uint64_t>(outcome->unpack_us));
      ir->set_compute_us(static_cast<uint64_t>(outcome->compute_us));
      ir->set_queue_length(static_cast<uint32_t>(queue_left));
      ir->set_batch_size(static_cast<uint32_t>(run.size()));
      if (outcome->exit) {
        metrics.server_exits++;
        auto* x = ir->mutable_server_exit();
        x->set_cut(static_cast<uint32_t>(outcome->exit->cut));
        x->set_position(outcome->exit->position);
        x->set_confidence(static_cast<float>(outcome->exit->confidence));
      }
      replies.push_back(std::move(reply));
    }
    return replies;
  }

  // A reply failed because the device has no route any more: its queued jobs are dropped.
  void device_gone(const std::string& identity) {
    if (clients.mark_gone(identity)) {
      metrics.clients_gone++;
      spdlog::debug("a device with work in flight has gone (reply unroutable)");
    }
  }

  void reply_to(const std::string& identity, const wire::Reply& reply) {
    metrics.count_reply(reply.status());
    Status s = transport::send_reply(router, identity, reply);
    if (!s.ok()) {
      metrics.unroutable++;
      if (s.code() == StatusCode::kNotFound) device_gone(identity);
    }
  }

  void release(const std::string& identity) {
    clients.release(identity);
    clients_in_flight.store(clients.size());
  }

  // Reads every pending monitor event and updates the client table.
  void drain_monitor() {
    for (;;) {
      zmq::message_t event, address;
      try {
        if (!monitor.recv(event, zmq::recv_flags::dontwait)) return;
        if (event.more()) (void)monitor.recv(address, zmq::recv_flags::none);
      } catch (const zmq::error_t&) {
        return;
      }
      if (event.size() < 6) continue;
      uint16_t kind = 0;
      int32_t value = 0;
      std::memcpy(&kind, event.data(), 2);
      std::memcpy(&value, static_cast<const char*>(event.data()) + 2, 4);
      if (kind == ZMQ_EVENT_ACCEPTED) {
        clients.on_accepted(value);
        metrics.connections_opened++;
        spdlog::debug("a connection opened (fd {})", value);
      } else if (kind == ZMQ_EVENT_DISCONNECTED) {
        metrics.connections_closed++;
        spdlog::debug("a connection closed (fd {})", value);
        const size_t gone = clients.on_disconnected(value);
        if (gone > 0) {
          metrics.clients_gone += gone;
          spdlog::debug("a device with work in flight disconnected (fd {})", value);
        }
      }
    }
  }

  void handle(transport::ParsedRequest&& parsed) {
    metrics.messages++;
    if (!parsed.ok()) {
      switch (parsed.error_status) {
        case wire::STATUS_TOO_LARGE:
          metrics.too_large++;
          break;
        case wire::STATUS_VERSION_MISMATCH:
          break;
        default:
          if (!parsed.can_reply()) return;  // a socket error, not a message
          metrics.malformed++;
      }
      spdlog::debug("rejected a message: {}", parsed.request.status().message());
      if (parsed.can_reply()) reply_to(parsed.identity, transport::make_error_reply(parsed));
      return;
    }
    const int source_fd = parsed.source_fd;
    const std::string user_id = parsed.user_id;
    transport::IncomingRequest in = std::move(parsed.request).value();
    const uint64_t id = in.request.request_id();
    metrics.bytes_in += in.bytes;
    switch (in.request.body_case()) {
      case wire::Request::kHello: {
        const wire::Hello& hello = in.request.hello();
        if (!hello.model_digest().empty() && models.count(hello.model_digest()) == 0) {
          reply_to(in.identity, transport::make_error_reply(
                                    id, wire::STATUS_UNKNOWN_MODEL,
                                    unknown_model_message(hello.model_digest(), catalog)));
          return;
        }
        wire::Reply reply;
        reply.set_request_id(id);
        reply.set_status(wire::STATUS_OK);
        *reply.mutable_hello() = transport::make_hello_reply(options.name, options.router.limits);
        reply.mutable_hello()->set_max_batch(static_cast<uint32_t>(options.max_batch));
        reply.mutable_hello()->set_max_queue_delay_us(
            static_cast<uint32_t>(options.max_queue_delay.count()));
        for (const auto& [digest, m] : models) {
          auto* d = reply.mutable_hello()->add_models();
          d->set_name(m.signature.name);
          d->set_digest(digest);
          d->set_num_cuts(static_cast<uint32_t>(m.signature.cut_count()));
          for (float t : m.tail_ms) d->add_tail_ms(t);
          d->set_engine(m.graph->engine_report().summary());
          d->set_cut_table(m.signature.cut_table);
          for (uint64_t t : m.codec_tables) d->add_codec_tables(t);
          if (m.exits) {
            d->set_exits_digest(m.exits->digest());
            for (const auto& x : m.exits->exits()) {
              auto* e = d->add_exits();
              e->set_cut(static_cast<uint32_t>(x.cut));
              e->set_position(x.position);
              e->set_ms(static_cast<float>(x.ms));
            }
          }
          for (const auto& [n, per_cut] : m.batch_tail_ms) {
            auto* b = d->add_batch_tail_ms();
            b->set_batch(static_cast<uint32_t>(n));
            for (float t : per_cut) b->add_tail_ms(t);
          }
        }
        reply_to(in.identity, reply);
        return;
      }
      case wire::Request::kPing: {
        wire::Reply reply;
        reply.set_request_id(id);
        reply.set_status(wire::STATUS_OK);
        reply.mutable_pong()->set_sent_us(in.request.ping().sent_us());
        reply.mutable_pong()->set_queue_length(static_cast<uint32_t>(queue_length()));
        reply.mutable_pong()->set_wait_us(
            static_cast<uint64_t>(std::llround(queue->expected_wait_ms() * 1e3)));
        reply_to(in.identity, reply);
        return;
      }
      case wire::Request::kInfer: {
        Admission admission = admit_infer(in.request.infer(), catalog);
        if (!admission.ok()) {
          reply_to(in.identity,
                   transport::make_error_reply(id, admission.status, admission.message));
          return;
        }
        const ServedModel& model = models.at(admission.model->digest);
        // A device seen for the first time: the monitor must have told its connection's
        // generation before the device is tied to its descriptor (ClientTable).
        if (!clients.knows(in.identity)) drain_monitor();
        GoneFlag gone =
            clients.try_acquire(in.identity, source_fd, options.max_in_flight_per_client, user_id);
        if (!gone) {
          metrics.busy_client_limit++;
          reply_to(
              in.identity,
              transport::make_error_reply(
                  id, wire::STATUS_BUSY,
                  "this device already has " + std::to_string(options.max_in_flight_per_client) +
                      " requests queued or running here (the per-device limit): wait for "
                      "their replies before sending more, or run locally"));
          return;
        }
        clients_in_flight.store(clients.size());
        // The request's bytes stay held until it is answered: within the server's budget or BUSY.
        std::optional<MemoryBudget::Lease> lease = budget->try_reserve(in.bytes);
        if (!lease) {
          release(in.identity);
          metrics.busy_memory++;
          reply_to(in.identity,
                   transport::make_error_reply(
                       id, wire::STATUS_BUSY,
                       "the server holds " + std::to_string(budget->used() >> 20) + " of its " +
                           std::to_string(budget->limit() >> 20) +
                           " MiB for queued requests and this one (" + std::to_string(in.bytes) +
                           " bytes) does not fit: retry later or run locally"));
          return;
        }
        const std::string identity = in.identity;
        const wire::InferRequest& infer = in.request.infer();
        const int cut = static_cast<int>(infer.cut());
        const auto now = Clock::now();
        Ticket ticket;
        ticket.key = BatchKey{model.signature.digest, cut};
        ticket.priority = static_cast<int>(std::min<uint32_t>(infer.priority(), 1000));
        ticket.enqueued = now;
        if (infer.deadline_us() > 0) {
          ticket.deadline =
              now + std::chrono::microseconds(std::min<uint64_t>(infer.deadline_us(), 3600e6));
        }
        Job job{std::move(in), &model, now, std::move(gone), ticket.deadline, std::move(*lease)};
        Job shed;
        BatchQueue<Job>::Need need;
        switch (queue->push(std::move(ticket), std::move(job), &shed, &need)) {
          case BatchQueue<Job>::Pushed::kQueued:
            metrics.count_model_request(model.signature.name, cut);
            return;
          case BatchQueue<Job>::Pushed::kQueuedShedding:
            metrics.count_model_request(model.signature.name, cut);
            metrics.shed_priority++;
            release(shed.request.identity);
            reply_to(shed.request.identity,
                     transport::make_error_reply(
                         shed.request.request.request_id(), wire::STATUS_BUSY,
                         "the server's queue is full and this request gave its place to one of "
                         "a higher priority class: retry later or run locally"));
            return;
          case BatchQueue<Job>::Pushed::kUnmeetable: {
            release(identity);
            metrics.expired++;
            metrics.expired_at_arrival++;
            char took[96];
            std::snprintf(took, sizeof took, "about %.1f ms in the queue and %.1f ms for its tail",
                          need.wait_ms, need.own_ms);
            wire::Reply reply =
                transport::make_error_reply(id, wire::STATUS_DEADLINE_EXCEEDED,
                                            std::string("this request would take ") + took +
                                                ", past its deadline: finish this frame locally");
            reply.set_wait_us(static_cast<uint64_t>(std::max(0.0, need.wait_ms) * 1000.0));
            reply_to(identity, reply);
            return;
          }
          case BatchQueue<Job>::Pushed::kRefused:
            break;
        }
        release(identity);
        metrics.busy_queue_full++;
        reply_to(identity,
                 transport::make_error_reply(id, wire::STATUS_BUSY,
                                             "the server's queue is full (" +
                                                 std::to_string(options.queue_capacity) +
                                                 " requests): retry later or run locally"));
        return;
      }
      default:
        metrics.malformed++;
        reply_to(in.identity,
                 transport::make_error_reply(id, wire::STATUS_MALFORMED, "empty request body"));
    }
  }

  // Forwards every reply the workers have finished to the ROUTER.
  void forward_replies() {
    for (;;) {
      zmq::message_t id, body;
      try {
        if (!replies.recv(id, zmq::recv_flags::dontwait)) return;
        if (!replies.recv(body, zmq::recv_flags::none)) return;
      } catch (const zmq::error_t&) {
        return;
      }
      const std::string identity = id.to_string();
      release(identity);
      if (body.size() == 0) continue;  // no reply: the device has gone or the result came late
      // The device left (ZMQ_ROUTER_MANDATORY: EHOSTUNREACH) or its queue is full (EAGAIN): the
      // reply is dropped and counted; the device finishes that frame itself.
      bool sent = false;
      bool gone = false;
      try {
        if (router.send(id, zmq::send_flags::sndmore | zmq::send_flags::dontwait)) {
          sent = router.send(body, zmq::send_flags::dontwait).has_value();
        }
      } catch (const zmq::error_t& e) {
        gone = e.num() == EHOSTUNREACH;
      }
      if (!sent) {
        metrics.unroutable++;
        if (gone) device_gone(identity);
      }
    }
  }

  void serve() {
    accepting.store(true);
    spdlog::info("accepting requests");
    zmq::pollitem_t items[] = {{router.handle(), 0, ZMQ_POLLIN, 0},
                               {replies.handle(), 0, ZMQ_POLLIN, 0},
                               {monitor.handle(), 0, ZMQ_POLLIN, 0}};
    while (!stop_requested.load()) {
      loop_beat_ms.store(now_ms());
      // Queued requests with deadlines are swept every few milliseconds.
      const bool deadlines = queue->has_deadlines();
      try {
        zmq::poll(items, 3, std::chrono::milliseconds(deadlines ? 2 : 100));
      } catch (const zmq::error_t& e) {
        if (e.num() == EINTR) continue;
        spdlog::error("poll failed: {}", e.what());
        break;
      }
      if (items[2].revents & ZMQ_POLLIN) drain_monitor();
      if (items[1].revents & ZMQ_POLLIN) forward_replies();
      if (items[0].revents & ZMQ_POLLIN) {
        // Bounded batch so replies keep flowing under a flood of requests.
        for (int i = 0; i < 256; ++i) {
          auto parsed = transport::receive_request(router, options.router.limits,
                                                   std::chrono::milliseconds(0));
          if (!parsed) break;
          handle(std::move(*parsed));
          if (options.slow_io.count() > 0) {
            std::this_thread::sleep_for(options.slow_io);
            break;  // one message per turn, so that replies still flow
          }
        }
      }
      if (deadlines || queue->has_deadlines()) sweep_expired();
    }
    shutdown();
  }

  // Stops accepting, refuses what is queued, waits (bounded) for running tails and forwards their
  // replies.
  void shutdown() {
    accepting.store(false);
    auto t0 = Clock::now();
    std::vector<Job> left = queue->drain();
    queue->stop();
    spdlog::info("shutting down: refusing {} queued requests, waiting for {} running", left.size(),
                 running_jobs.load());
    for (auto& job : left) {
      release(job.request.identity);
      metrics.refused_shutdown++;
      reply_to(
          job.request.identity,
          transport::make_error_reply(job.request.request.request_id(), wire::STATUS_SHUTTING_DOWN,
                                      "the server is shutting down: finish this frame locally"));
    }
    // New requests that arrive meanwhile are refused too, so no device waits for a timeout.
    auto deadline = t0 + options.shutdown_timeout;
    while (running_jobs.load() > 0 && Clock::now() < deadline && !hurry_requested.load()) {
      zmq::pollitem_t items[] = {{replies.handle(), 0, ZMQ_POLLIN, 0},
                                 {router.handle(), 0, ZMQ_POLLIN, 0}};
      try {
        zmq::poll(items, 2, std::chrono::milliseconds(20));
      } catch (const zmq::error_t& e) {
        if (e.num() == EINTR) continue;  // a signal: hurry() may have been asked for
        spdlog::error("poll failed while shutting down: {}", e.what());
        break;
      }
      forward_replies();
      refuse_incoming();
    }
    const bool stuck = running_jobs.load() > 0;
    if (!stuck) {
      for (auto& t : workers) {
        if (t.joinable()) t.join();
      }
    }
    forward_replies();
    refuse_incoming();
    idle.store(!stuck);
    // Let ZeroMQ write the last replies before the socket closes.
    router.set(zmq::sockopt::linger, 1000);
    if (stuck) {
      spdlog::warn("{} tails still running after {} ms: returning without them",
                   running_jobs.load(), options.shutdown_timeout.count());
    }
    spdlog::info(
        "stopped after {} ms: {} ok, {} malformed, {} too large, {} busy (queue), {} busy "
        "(per-device limit), {} refused at shutdown, {} dropped (device gone), {} unroutable",
        micros(Clock::now() - t0) / 1000, metrics.replies(wire::STATUS_OK),
        metrics.malformed.load(), metrics.too_large.load(), metrics.busy_queue_full.load(),
        metrics.busy_client_limit.load(), metrics.refused_shutdown.load(),
        metrics.dropped_gone.load(), metrics.unroutable.load());
  }

  // During shutdown: every inference request gets STATUS_SHUTTING_DOWN, the rest as usual.
  void refuse_incoming() {
    for (int i = 0; i < 256; ++i) {
      auto parsed =
          transport::receive_request(router, options.router.limits, std::chrono::milliseconds(0));
      if (!parsed) return;
      if (parsed->ok() && parsed->request->request.body_case() == wire::Request::kInfer) {
        metrics.messages++;
        metrics.refused_shutdown++;
        reply_to(parsed->identity,
                 transport::make_error_reply(parsed->request_id, wire::STATUS_SHUTTING_DOWN,
                                             "the server is shutting down: finish this frame "
                                             "locally"));
      } else if (parsed->can_reply()) {
        handle(std::move(*parsed));
      }
    }
  }
};

InferenceServer::InferenceServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

InferenceServer::~InferenceServer() {
  if (!impl_) return;
  impl_->http.reset();
  if (impl_->queue) impl_->queue->stop();
  for (auto& t : impl_->workers) {
    if (t.joinable()) t.join();
  }
  zmq_socket_monitor(impl_->router.handle(), nullptr, 0);
  impl_->monitor.close();
}

Result<std::unique_ptr<InferenceServer>> InferenceServer::create(const ServerOptions& options) {
  if (options.model_paths.empty()) {
    return invalid_argument("no model given: pass --model FILE (a TorchScript file)");
  }
  if (options.workers < 1) return invalid_argument("--workers must be at least 1");
  BatchingOptions batching = batching_options(options);
  EDGESPLIT_RETURN_IF_ERROR(check_batching(batching));
  if (options.max_in_flight_per_client < 1) {
    return invalid_argument("--max-in-flight-per-client must be at least 1");
  }
  if (options.max_queued_bytes < options.router.limits.max_message_bytes) {
    return invalid_argument(
        "--max-queued-bytes must be at least the largest request accepted (--max-message-mb)");
  }
  if (options.use_allow_list && options.router.curve_secret_key.empty()) {
    return invalid_argument("an allow-list of device keys needs CURVE: pass --curve-secret too");
  }
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  impl->decode_limits = options.decode_limits;
  impl->decode_limits.tables = &impl->codec_tables;
  impl->queue = std::make_unique<BatchQueue<Job>>(batching);
  impl->budget = std::make_unique<MemoryBudget>(options.max_queued_bytes);
  partitioner::set_compute_threads(options.compute_threads);
  partitioner::install_tensor_cache(options.tensor_cache_bytes);
  for (size_t i = 0; i < options.model_paths.size(); ++i) {
    const std::string& path = options.model_paths[i];
    const std::string meta = i < options.meta_paths.size() ? options.meta_paths[i] : "";
    partitioner::LoadOptions lo;
    lo.engine = options.engine;
    lo.retain = partitioner::Retain::kTails;  // a server runs no head
    if (options.device != "cpu") lo.device = options.device;
    if (i < options.variants.size()) lo.variant = options.variants[i];
    std::string name;
    auto info = partitioner::load_model_info(path, meta);
    if (info.ok()) {
      info = partitioner::with_variant_input(*info, lo.variant);
      if (!info.ok()) return info.status();
      lo.input_shape = info->input_shape;
      name = info->name;
    } else if (!meta.empty() || info.status().code() != StatusCode::kNotFound) {
      return info.status();
    }
    auto graph = partitioner::ModelGraph::load(path, lo);
    if (!graph.ok()) return graph.status();
    // Build every tail now: the first request for a cut should not pay for it.
    for (const auto& point : (*graph)->cuts()) (*graph)->prepare_tail(point.id);
    // With batching on, every cut's tail is checked to give the same rows in a batch as alone;
    // a cut that does not runs its requests one by one.
    std::vector<bool> batchable((*graph)->cuts().size(), false);
    if (batching.max_batch > 1) {
      int refused = 0;
      std::string first_reason;
      for (const auto& point : (*graph)->cuts()) {
        Status ok = check_batched_tail(**graph, point.id, 2);
        batchable[static_cast<size_t>(point.id)] = ok.ok();
        if (!ok.ok()) {
          if (refused++ == 0) first_reason = ok.message();
        }
      }
      if (refused > 0) {
        spdlog::warn(
            "model {}: {} of {} cuts run one request at a time (their tails do not "
            "batch: {})",
            path, refused, (*graph)->cuts().size(), first_reason);
      }
    }
    if (name.empty()) name = path.substr(path.find_last_of('/') + 1);
    if (!lo.variant.empty()) name += " [" + lo.variant.label() + "]";
    const std::string digest = (*graph)->digest();
    if (impl->models.count(digest)) {
      spdlog::info("model {} ({}) is listed twice; serving it once", name, digest);
      continue;
    }
    spdlog::info("model {} ({}): {} cuts, {} weight bytes; engine {}", name, digest,
                 (*graph)->cuts().size(), (*graph)->total_weight_bytes(),
                 (*graph)->engine_report().summary());
    ServedModel served{signature_of(**graph, name),
                       std::move(graph).value(),
                       std::nullopt,
                       {},
                       {},
                       std::move(batchable),
                       {},
                       {},
                       nullptr};
    if (info.ok()) served.info = std::move(info).value();
    // The tail-time table devices get in the handshake.
    const std::string explicit_profile =
        i < options.profile_paths.size() ? options.profile_paths[i] : "";
    const std::filesystem::path beside =
        std::filesystem::path(path).replace_extension("").string() + ".profile.json";
    // The profile beside the file is the file's own, not a derived variant's.
    const std::string profile_path =
        !explicit_profile.empty()
            ? explicit_profile
            : (lo.variant.empty() && std::filesystem::exists(beside) ? beside.string() : "");
    if (!profile_path.empty()) {
      auto profile = profiles::load_profile(profile_path, digest);
      if (!profile.ok()) return profile.status();
      if (profile->cuts.size() == served.graph->cuts().size()) {
        for (const auto& c : profile->cuts)
          served.tail_ms.push_back(static_cast<float>(c.tail.median_ms));
        // Batch timings measured for every cut (edgesplit-profile --batch-sizes).
        for (const auto& [n, t] : profile->cuts.front().tail_batch) {
          std::vector<float> per_cut;
          for (const auto& c : profile->cuts) {
            auto it = c.tail_batch.find(n);
            if (it == c.tail_batch.end()) break;
            per_cut.push_back(static_cast<float>(it->second.median_ms));
          }
          if (per_cut.size() == profile->cuts.size()) served.batch_tail_ms[n] = std::move(per_cut);
        }
        spdlog::info("model {}: tail times from {} (measured on {})", name, profile_path,
                     profile->server_machine.hostname);
        for (const auto& c : profile->cuts) {
          for (const auto& e : c.encodings) {
            if (!e.encoding.entropy_table) continue;
            Status added = impl->codec_tables.add(e.encoding.entropy_table);
            if (!added.ok()) return added;
            served.codec_tables.push_back(e.encoding.entropy_table->id);
          }
        }
        if (!served.codec_tables.empty()) {
          spdlog::info("model {}: {} entropy-coding tables from the profile", name,
                       served.codec_tables.size());
        }
      } else {
        spdlog::warn("profile {} has {} cuts, model {} has {}: not sending tail times",
                     profile_path, profile->cuts.size(), name, served.graph->cuts().size());
      }
    }
    // Where the profile timed batches, a cut batches only up to the size with the lowest time per
    // request when a larger measured size costs more per request (large activations on a CPU).
    if (batching.max_batch > 1) {
      const auto caps = batch_caps(served.tail_ms, served.batch_tail_ms, batching.max_batch);
      served.batch_caps = caps;
      std::string capped;
      for (size_t cut = 0; cut < caps.size(); ++cut) {
        if (caps[cut] == 0) continue;
        impl->queue->set_key_cap({digest, static_cast<int>(cut)}, caps[cut]);
        capped +=
            (capped.empty() ? "" : ", ") + std::to_string(cut) + ":" + std::to_string(caps[cut]);
      }
      if (!capped.empty()) {
        spdlog::info(
            "model {}: batches capped where the profile shows larger ones cost more per "
            "request (cut:batch) {}",
            name, capped);
      }
      // The profile's times per batch size shape the estimates of sizes not run yet.
      const size_t profiled_cuts = served.batch_tail_ms.empty() ? 0 : served.tail_ms.size();
      for (size_t cut = 0; cut < profiled_cuts; ++cut) {
        if (served.tail_ms[cut] <= 0) continue;
        std::map<size_t, double> times{{1, served.tail_ms[cut]}};
        for (const auto& [n, per_cut] : served.batch_tail_ms) {
          if (cut < per_cut.size() && per_cut[cut] > 0)
            times[static_cast<size_t>(n)] = per_cut[cut];
        }
        impl->queue->set_key_profile({digest, static_cast<int>(cut)}, std::move(times));
      }
    }
    impl->catalog[digest] = served.signature;
    impl->models[digest] = std::move(served);
  }
  // Each exits file goes with the served model its heads were trained on.
  for (const std::string& path : options.exits_paths) {
    auto set = profiles::load_exits(path);
    if (!set.ok()) return invalid_argument("--exits: " + set.status().message());
    ServedModel* target = nullptr;
    std::string served;
    for (auto& [digest, m] : impl->models) {
      served += (served.empty() ? "" : ", ") + m.signature.name + " (" + digest + ")";
      if (digest == set->model_digest) target = &m;
    }
    if (!target) {
      return invalid_argument("--exits " + path + ": its heads were trained on model " +
                              set->model_digest + ", which this server does not serve (it serves " +
                              served + ")");
    }
    if (target->exits) {
      return invalid_argument("--exits " + path + ": model " + target->signature.name +
                              " already has exits from " + target->exits->path());
    }
    auto exits = ServerExits::load(path, *target->graph, options.engine);
    if (!exits.ok()) return exits.status();
    target->exits = std::move(exits).value();
    std::string list;
    for (const auto& x : target->exits->exits()) {
      char buf[96];
      std::snprintf(buf, sizeof buf, "%s%s at cut %d (%.3f ms)", list.empty() ? "" : ", ",
                    x.position.c_str(), x.cut, x.ms);
      list += buf;
    }
    spdlog::info("model {}: early exits from {}: {}", target->signature.name, path, list);
    // The parts between the exits, built now (the part from a request's cut to the first exit
    // is built on first use).
    int at = 0;
    for (const auto& x : target->exits->exits()) {
      if (at > 0) target->graph->prepare_between(at, x.cut);
      at = x.cut;
    }
  }
  const bool curve = !options.router.curve_secret_key.empty();
  if (curve && !transport::curve_available()) {
    return invalid_argument("this libzmq has no CURVE support (built without libsodium)");
  }
  // With CURVE a ZAP handler always runs: with an allow-list it enforces it; without one it
  // accepts any key and names each connection by it, so the in-flight limit counts per key.
  if (curve) {
    auto zap =
        transport::ZapHandler::start(impl->context, options.allowed_keys, !options.use_allow_list);
    if (!zap.ok()) return zap.status();
    impl->zap = std::move(zap).value();
  }
  transport::RouterOptions router_options = options.router;
  router_options.rcvhwm = receive_hwm(options.router.rcvhwm, options.max_queued_bytes,
                                      options.router.limits.max_message_bytes);
  auto router = transport::bind_router(impl->context, router_options);
  if (!router.ok()) return router.status();
  impl->router = std::move(router).value();
  impl->endpoint = transport::last_endpoint(impl->router);
  if (!curve && !is_local_endpoint(impl->endpoint)) {
    spdlog::warn(
        "listening on {} without CURVE: traffic is plaintext and any host that reaches the port "
        "can use this server; pass --curve-secret (edgesplit-keygen makes the keys)",
        impl->endpoint);
  }
  if (curve) {
    spdlog::info("CURVE on: {}",
                 options.use_allow_list
                     ? std::to_string(options.allowed_keys.size()) + " device keys allowed"
                     : std::string("any device that knows the public key"));
  }
  if (zmq_socket_monitor(impl->router.handle(), kMonitorEndpoint,
                         ZMQ_EVENT_ACCEPTED | ZMQ_EVENT_DISCONNECTED) != 0) {
    return internal_error(std::string("cannot monitor the server socket: ") +
                          zmq_strerror(zmq_errno()));
  }
  impl->monitor = zmq::socket_t(impl->context, zmq::socket_type::pair);
  impl->monitor.set(zmq::sockopt::linger, 0);
  impl->monitor.connect(kMonitorEndpoint);
  impl->replies = zmq::socket_t(impl->context, zmq::socket_type::pull);
  impl->replies.set(zmq::sockopt::linger, 0);
  impl->replies.bind(kReplyEndpoint);
  if (options.http_port >= 0) {
    Impl* p = impl.get();
    HttpHandlers h;
    h.live = [p] {
      // Alive while the I/O loop turns (it wakes at least every 100 ms), or before it started.
      const int64_t beat = p->loop_beat_ms.load();
      return beat == 0 || now_ms() - beat < 5000 || !p->accepting.load();
    };
    h.ready = [p] {
      return p->accepting.load() && p->workers_warming.load() == 0 && !p->stop_requested.load();
    };
    h.metrics = [p] { return p->metrics.render(p->gauges()); };
    auto http = HttpEndpoint::start(options.http_host, options.http_port, std::move(h));
    if (!http.ok()) return http.status();
    impl->http = std::move(http).value();
    spdlog::info("HTTP on {}:{} (/healthz, /readyz, /metrics)", impl->http->host(),
                 impl->http->port());
  }
  impl->workers_warming.store(options.workers);
  for (int i = 0; i < options.workers; ++i) {
    impl->workers.emplace_back([p = impl.get()] { p->worker_loop(); });
  }
  return std::unique_ptr<InferenceServer>(new InferenceServer(std::move(impl)));
}

const std::string& InferenceServer::endpoint() const { return impl_->endpoint; }
int InferenceServer::http_port() const { return impl_->http ? impl_->http->port() : -1; }
void InferenceServer::run() { impl_->serve(); }
void InferenceServer::stop() { impl_->stop_requested.store(true); }
void InferenceServer::hurry() {
  impl_->stop_requested.store(true);
  impl_->hurry_requested.store(true);
}
bool InferenceServer::idle() const { return impl_->idle.load(); }
const ServerMetrics& InferenceServer::metrics() const { return impl_->metrics; }
std::string InferenceServer::render_metrics() const {
  return impl_->metrics.render(impl_->gauges());
}

std::vector<std::string> InferenceServer::describe_models() const {
  std::vector<std::string> out;
  for (const auto& [digest, m] : impl_->models) {
    out.push_back(m.signature.name + " " + digest + " (" + std::to_string(m.signature.cut_count()) +
                  " cuts)");
  }
  return out;
}

}  // namespace edgesplit::server

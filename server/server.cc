#include "server/server.h"

#include <spdlog/spdlog.h>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <thread>

#include "partitioner/model_graph.h"
#include "partitioner/model_info.h"
#include "server/tail_executor.h"

namespace edgesplit::server {
namespace {

using Clock = std::chrono::steady_clock;
constexpr const char* kReplyEndpoint = "inproc://edgesplit-replies";

struct ServedModel {
  std::string name;
  std::shared_ptr<partitioner::ModelGraph> graph;
};

// One queued inference: the validated request with its payload frames.
struct Job {
  transport::IncomingRequest request;
  const ServedModel* model = nullptr;
  Clock::time_point enqueued;
};

int64_t micros(Clock::duration d) {
  return std::chrono::duration_cast<std::chrono::microseconds>(d).count();
}

}  // namespace

struct InferenceServer::Impl {
  ServerOptions options;
  zmq::context_t context{1};
  zmq::socket_t router;
  zmq::socket_t replies;  // PULL: workers' replies, forwarded by the I/O thread
  std::string endpoint;
  std::map<std::string, ServedModel> models;  // by digest
  ServerCounters counters;
  std::atomic<bool> stop_requested{false};

  std::mutex mu;
  std::condition_variable cv;
  std::deque<Job> queue;
  bool workers_stop = false;
  std::atomic<int> running_jobs{0};
  std::vector<std::thread> workers;

  void worker_loop() {
    zmq::socket_t push(context, zmq::socket_type::push);
    push.set(zmq::sockopt::linger, 1000);
    push.connect(kReplyEndpoint);
    for (;;) {
      Job job;
      size_t queue_left = 0;
      {
        std::unique_lock<std::mutex> lock(mu);
        cv.wait(lock, [&] { return workers_stop || !queue.empty(); });
        if (queue.empty()) return;  // stopping and nothing left
        job = std::move(queue.front());
        queue.pop_front();
        queue_left = queue.size();
        running_jobs.fetch_add(1);
      }
      wire::Reply reply = execute(job, queue_left);
      std::string bytes = reply.SerializeAsString();
      zmq::message_t id(job.request.identity.data(), job.request.identity.size());
      push.send(id, zmq::send_flags::sndmore);
      push.send(zmq::buffer(bytes), zmq::send_flags::none);
      running_jobs.fetch_sub(1);
    }
  }

  wire::Reply execute(Job& job, size_t queue_left) {
    auto started = Clock::now();
    const wire::InferRequest& req = job.request.request.infer();
    const uint64_t id = job.request.request.request_id();
    std::vector<PackedView> views;
    views.reserve(job.request.payloads.size());
    for (const auto& m : job.request.payloads) {
      views.push_back({static_cast<const uint8_t*>(m.data()), m.size()});
    }
    auto outcome = run_tail_request(*job.model->graph, static_cast<int>(req.cut()), views,
                                    static_cast<int>(req.top_k()), req.want_logits(),
                                    options.decode_limits);
    if (!outcome.ok()) {
      const Status& s = outcome.status();
      if (s.code() == StatusCode::kMalformed) {
        counters.malformed++;
        return transport::make_error_reply(id, wire::STATUS_MALFORMED, s.message());
      }
      counters.errors++;
      spdlog::error("request {}: {}", id, s.message());
      return transport::make_error_reply(id, wire::STATUS_INTERNAL, s.message());
    }
    counters.answered_ok++;
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
    ir->set_batch_size(1);
    return reply;
  }

  void reply_to(const std::string& identity, const wire::Reply& reply) {
    Status s = transport::send_reply(router, identity, reply);
    if (!s.ok()) counters.unroutable++;
  }

  void handle(transport::ParsedRequest&& parsed) {
    if (!parsed.ok()) {
      if (parsed.error_status == wire::STATUS_UNKNOWN_MODEL || parsed.error_status == wire::STATUS_BAD_CUT ||
          parsed.error_status == wire::STATUS_VERSION_MISMATCH) {
        counters.errors++;
      } else {
        counters.malformed++;
      }
      if (parsed.can_reply()) reply_to(parsed.identity, transport::make_error_reply(parsed));
      return;
    }
    transport::IncomingRequest in = std::move(parsed.request).value();
    const uint64_t id = in.request.request_id();
    counters.bytes_in += in.bytes;
    switch (in.request.body_case()) {
      case wire::Request::kHello: {
        const wire::Hello& hello = in.request.hello();
        if (!hello.model_digest().empty() && models.count(hello.model_digest()) == 0) {
          counters.errors++;
          reply_to(in.identity, transport::make_error_reply(id, wire::STATUS_UNKNOWN_MODEL,
                                                            unknown_model_message(hello.model_digest())));
          return;
        }
        wire::Reply reply;
        reply.set_request_id(id);
        reply.set_status(wire::STATUS_OK);
        *reply.mutable_hello() = transport::make_hello_reply(options.name, options.router.limits);
        for (const auto& [digest, m] : models) {
          auto* d = reply.mutable_hello()->add_models();
          d->set_name(m.name);
          d->set_digest(digest);
          d->set_num_cuts(static_cast<uint32_t>(m.graph->cuts().size()));
        }
        reply_to(in.identity, reply);
        return;
      }
      case wire::Request::kPing: {
        wire::Reply reply;
        reply.set_request_id(id);
        reply.set_status(wire::STATUS_OK);
        reply.mutable_pong()->set_sent_us(in.request.ping().sent_us());
        {
          std::lock_guard<std::mutex> lock(mu);
          reply.mutable_pong()->set_queue_length(static_cast<uint32_t>(queue.size()));
        }
        reply_to(in.identity, reply);
        return;
      }
      case wire::Request::kInfer: {
        const wire::InferRequest& req = in.request.infer();
        auto it = models.find(req.model_digest());
        if (it == models.end()) {
          counters.errors++;
          reply_to(in.identity, transport::make_error_reply(id, wire::STATUS_UNKNOWN_MODEL,
                                                            unknown_model_message(req.model_digest())));
          return;
        }
        if (!it->second.graph->has_cut(static_cast<int>(req.cut()))) {
          counters.errors++;
          reply_to(in.identity,
                   transport::make_error_reply(
                       id, wire::STATUS_BAD_CUT,
                       "cut " + std::to_string(req.cut()) + " does not exist: the model has cuts 0.." +
                           std::to_string(it->second.graph->device_cut())));
          return;
        }
        counters.requests++;
        Job job{std::move(in), &it->second, Clock::now()};
        {
          std::lock_guard<std::mutex> lock(mu);
          if (queue.size() < options.queue_capacity) {
            queue.push_back(std::move(job));
            cv.notify_one();
            return;
          }
        }
        counters.busy++;
        reply_to(job.request.identity,
                 transport::make_error_reply(id, wire::STATUS_BUSY,
                                             "the server's queue is full (" +
                                                 std::to_string(options.queue_capacity) +
                                                 " requests): retry later or run locally"));
        return;
      }
      default:
        counters.malformed++;
        reply_to(in.identity,
                 transport::make_error_reply(id, wire::STATUS_MALFORMED, "empty request body"));
    }
  }

  std::string unknown_model_message(const std::string& digest) const {
    std::string served;
    for (const auto& [d, m] : models) served += (served.empty() ? "" : ", ") + m.name + " (" + d + ")";
    return "this server does not serve model " + digest + "; it serves " +
           (served.empty() ? std::string("nothing") : served) +
           ": start the device and the server with the same model file";
  }

  // Forwards every reply the workers have finished to the ROUTER.
  void forward_replies() {
    for (;;) {
      zmq::message_t id, body;
      auto got = replies.recv(id, zmq::recv_flags::dontwait);
      if (!got) return;
      if (!replies.recv(body, zmq::recv_flags::none)) return;
      // The device left (ZMQ_ROUTER_MANDATORY: EHOSTUNREACH) or its queue is full (EAGAIN): the
      // reply is dropped and counted; the device finishes that frame itself.
      bool sent = false;
      try {
        if (router.send(id, zmq::send_flags::sndmore | zmq::send_flags::dontwait)) {
          sent = router.send(body, zmq::send_flags::dontwait).has_value();
        }
      } catch (const zmq::error_t&) {
        sent = false;
      }
      if (!sent) counters.unroutable++;
    }
  }

  void serve() {
    zmq::pollitem_t items[] = {{router.handle(), 0, ZMQ_POLLIN, 0},
                               {replies.handle(), 0, ZMQ_POLLIN, 0}};
    while (!stop_requested.load()) {
      try {
        zmq::poll(items, 2, std::chrono::milliseconds(100));
      } catch (const zmq::error_t& e) {
        if (e.num() == EINTR) continue;
        spdlog::error("poll failed: {}", e.what());
        break;
      }
      if (items[1].revents & ZMQ_POLLIN) forward_replies();
      if (items[0].revents & ZMQ_POLLIN) {
        // Bounded batch so replies keep flowing under a flood of requests.
        for (int i = 0; i < 256; ++i) {
          auto parsed = transport::receive_request(router, options.router.limits,
                                                   std::chrono::milliseconds(0));
          if (!parsed) break;
          handle(std::move(*parsed));
        }
      }
    }
    shutdown();
  }

  // Refuses what is queued, waits (bounded) for running tails and forwards their replies.
  void shutdown() {
    std::deque<Job> left;
    {
      std::lock_guard<std::mutex> lock(mu);
      left.swap(queue);
      workers_stop = true;
    }
    cv.notify_all();
    for (auto& job : left) {
      reply_to(job.request.identity,
               transport::make_error_reply(job.request.request.request_id(),
                                           wire::STATUS_SHUTTING_DOWN,
                                           "the server is shutting down: finish this frame locally"));
    }
    auto deadline = Clock::now() + std::chrono::seconds(10);
    while (running_jobs.load() > 0 && Clock::now() < deadline) {
      zmq::pollitem_t item{replies.handle(), 0, ZMQ_POLLIN, 0};
      zmq::poll(&item, 1, std::chrono::milliseconds(20));
      forward_replies();
    }
    for (auto& t : workers) {
      if (t.joinable()) t.join();
    }
    forward_replies();
    spdlog::info("stopped: {} requests, {} answered, {} malformed, {} busy, {} errors",
                 counters.requests.load(), counters.answered_ok.load(), counters.malformed.load(),
                 counters.busy.load(), counters.errors.load());
  }
};

InferenceServer::InferenceServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

InferenceServer::~InferenceServer() {
  if (!impl_) return;
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    impl_->workers_stop = true;
  }
  impl_->cv.notify_all();
  for (auto& t : impl_->workers) {
    if (t.joinable()) t.join();
  }
}

Result<std::unique_ptr<InferenceServer>> InferenceServer::create(const ServerOptions& options) {
  if (options.model_paths.empty()) {
    return invalid_argument("no model given: pass --model FILE (a TorchScript file)");
  }
  if (options.workers < 1) return invalid_argument("--workers must be at least 1");
  if (options.queue_capacity < 1) return invalid_argument("--queue must be at least 1");
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  set_compute_threads(options.compute_threads);
  for (size_t i = 0; i < options.model_paths.size(); ++i) {
    const std::string& path = options.model_paths[i];
    const std::string meta = i < options.meta_paths.size() ? options.meta_paths[i] : "";
    partitioner::LoadOptions lo;
    std::string name;
    auto info = partitioner::load_model_info(path, meta);
    if (info.ok()) {
      lo.input_shape = info->input_shape;
      name = info->name;
    } else if (!meta.empty() || info.status().code() != StatusCode::kNotFound) {
      return info.status();
    }
    auto graph = partitioner::ModelGraph::load(path, lo);
    if (!graph.ok()) return graph.status();
    if (name.empty()) name = path.substr(path.find_last_of('/') + 1);
    const std::string digest = (*graph)->digest();
    spdlog::info("model {} ({}): {} cuts, {} weight bytes", name, digest, (*graph)->cuts().size(),
                 (*graph)->total_weight_bytes());
    impl->models[digest] = ServedModel{name, std::move(graph).value()};
  }
  auto router = transport::bind_router(impl->context, options.router);
  if (!router.ok()) return router.status();
  impl->router = std::move(router).value();
  impl->endpoint = transport::last_endpoint(impl->router);
  impl->replies = zmq::socket_t(impl->context, zmq::socket_type::pull);
  impl->replies.set(zmq::sockopt::linger, 0);
  impl->replies.bind(kReplyEndpoint);
  for (int i = 0; i < options.workers; ++i) {
    impl->workers.emplace_back([p = impl.get()] { p->worker_loop(); });
  }
  return std::unique_ptr<InferenceServer>(new InferenceServer(std::move(impl)));
}

const std::string& InferenceServer::endpoint() const { return impl_->endpoint; }
void InferenceServer::run() { impl_->serve(); }
void InferenceServer::stop() { impl_->stop_requested.store(true); }
const ServerCounters& InferenceServer::counters() const { return impl_->counters; }

std::vector<std::string> InferenceServer::describe_models() const {
  std::vector<std::string> out;
  for (const auto& [digest, m] : impl_->models) {
    out.push_back(m.name + " " + digest + " (" + std::to_string(m.graph->cuts().size()) + " cuts)");
  }
  return out;
}

}  // namespace edgesplit::server

// Status and Result: the project-wide value type for expected failures (a malformed frame, a
// timeout, a missing file). Header-only and free of LibTorch, so every component can use it.
#pragma once

#include <optional>
#include <string>
#include <utility>
#include <variant>

namespace edgesplit {

// What went wrong, coarsely; the message says the rest in one sentence.
enum class StatusCode {
  kOk = 0,
  kInvalidArgument,    // a caller's or user's input is wrong
  kMalformed,          // bytes from outside (network, file) fail validation
  kUnsupported,        // a valid request for something this build or model cannot do
  kNotFound,           // a file, model or cut that does not exist
  kTimeout,            // a deadline passed
  kUnavailable,        // a peer is unreachable or busy
  kResourceExhausted,  // a limit was hit (queue full, message too large)
  kInternal,           // a bug: an invariant broke
};

const char* status_code_name(StatusCode code);

// A status: code plus a one-sentence message. Cheap to copy when ok.
class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status ok_status() { return Status(); }
  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  // "malformed: shape x bits does not match payload length (...)"
  std::string to_string() const { return std::string(status_code_name(code_)) + ": " + message_; }

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

inline Status invalid_argument(std::string m) {
  return {StatusCode::kInvalidArgument, std::move(m)};
}
inline Status malformed(std::string m) { return {StatusCode::kMalformed, std::move(m)}; }
inline Status unsupported(std::string m) { return {StatusCode::kUnsupported, std::move(m)}; }
inline Status not_found(std::string m) { return {StatusCode::kNotFound, std::move(m)}; }
inline Status timeout_error(std::string m) { return {StatusCode::kTimeout, std::move(m)}; }
inline Status unavailable(std::string m) { return {StatusCode::kUnavailable, std::move(m)}; }
inline Status resource_exhausted(std::string m) {
  return {StatusCode::kResourceExhausted, std::move(m)};
}
inline Status internal_error(std::string m) { return {StatusCode::kInternal, std::move(m)}; }

inline const char* status_code_name(StatusCode code) {
  switch (code) {
    case StatusCode::kOk:
      return "ok";
    case StatusCode::kInvalidArgument:
      return "invalid argument";
    case StatusCode::kMalformed:
      return "malformed";
    case StatusCode::kUnsupported:
      return "unsupported";
    case StatusCode::kNotFound:
      return "not found";
    case StatusCode::kTimeout:
      return "timeout";
    case StatusCode::kUnavailable:
      return "unavailable";
    case StatusCode::kResourceExhausted:
      return "resource exhausted";
    case StatusCode::kInternal:
      return "internal";
  }
  return "unknown";
}

// A value or the Status saying why there is none.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}         // NOLINT: implicit by design
  Result(Status status) : v_(std::move(status)) {}  // NOLINT: implicit by design

  bool ok() const { return std::holds_alternative<T>(v_); }
  const Status& status() const {
    static const Status kOk;
    return ok() ? kOk : std::get<Status>(v_);
  }
  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace edgesplit

// Returns the status from the enclosing function when it is not ok.
#define EDGESPLIT_RETURN_IF_ERROR(expr)                    \
  do {                                                     \
    ::edgesplit::Status edgesplit_status_ = (expr);        \
    if (!edgesplit_status_.ok()) return edgesplit_status_; \
  } while (0)

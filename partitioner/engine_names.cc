// The engines' names (engine_name, parse_engine from model_graph.h), apart from model_graph.cc so
// that code free of LibTorch (the device's configuration) can parse --engine.
#include <optional>
#include <string>

#include "partitioner/model_graph.h"

namespace edgesplit::partitioner {

const char* engine_name(Engine engine) {
  switch (engine) {
    case Engine::kPlain:
      return "plain";
    case Engine::kOptimized:
      return "optimized";
    case Engine::kOneDnn:
      return "onednn";
    case Engine::kXnnpack:
      return "xnnpack";
  }
  return "unknown";
}

std::optional<Engine> parse_engine(const std::string& text) {
  for (Engine e : {Engine::kPlain, Engine::kOptimized, Engine::kOneDnn, Engine::kXnnpack}) {
    if (text == engine_name(e)) return e;
  }
  return std::nullopt;
}

}  // namespace edgesplit::partitioner

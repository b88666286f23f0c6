// A digest of a model's cut table (each cut's id, name and crossing shapes). Cut ids are positions
// produced by each side's graph passes: a device and a server that disagree on them would send a
// tensor to the wrong tail. The server states its digest in the handshake and a device whose own
// table differs does not offload that model. Free of LibTorch.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace edgesplit::partitioner {

struct CutTableEntry {
  int id = 0;
  std::string name;
  std::vector<std::vector<int64_t>> shapes;  // crossing tensors, batch 1
};

// "fnv1a64:" and 16 hex digits of the 64-bit FNV-1a hash of one line per cut, in the order given:
// "<id> <name> <d0>x<d1>x...[,<next shape>]\n". Not a security measure: a mismatch detector.
std::string cut_table_digest(const std::vector<CutTableEntry>& cuts);

}  // namespace edgesplit::partitioner

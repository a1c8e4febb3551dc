// Memtable insert hints for raftflow's column families.
//
// A memtable is a skip list; inserting a key searches it from the top, and at a memtable of
// ~100,000 rows that search is a chain of cache misses: it was 15% of a node's CPU under load.
// RocksDB can instead start the search where the last key with the same prefix went
// (`memtable_insert_with_hint_prefix_extractor`), which costs a few comparisons when the new
// key lands next to it. raftflow's writes mostly do:
//
// - a workflow's or task's row is rewritten by each of its transitions: the new version sorts
//   right before the old one, so the prefix is the whole key;
// - a workflow's history rows are `h/<id>\0<revision>`, each after the last: the prefix is
//   the key without its 8-byte revision;
// - a group's log entries follow each other: the prefix is the key's group.
//
// RocksDB's C API cannot set this option, and its options string can only name transforms in
// its object registry, so this file registers the two transforms there (see `register()` in
// lib.rs). They only choose where a search starts: any prefix gives the same memtable.

#include <memory>
#include <string>

#include "rocksdb/slice.h"
#include "rocksdb/slice_transform.h"
#include "rocksdb/utilities/object_registry.h"

namespace {

using rocksdb::Slice;
using rocksdb::SliceTransform;

// Every key of every column family starts with its group (u64, big-endian).
constexpr size_t kGroup = 8;
constexpr size_t kRevision = 8;

class StateRowHint : public SliceTransform {
 public:
  static const char* kClassName() { return "raftflow.StateRowHint"; }
  const char* Name() const override { return kClassName(); }

  Slice Transform(const Slice& key) const override {
    // group ‖ "h/" ‖ id ‖ 0 ‖ revision: one prefix for all of a workflow's history.
    if (key.size() >= kGroup + 2 + 1 + kRevision && key[kGroup] == 'h' &&
        key[kGroup + 1] == '/' && key[key.size() - kRevision - 1] == '\0') {
      return Slice(key.data(), key.size() - kRevision);
    }
    return key;
  }

  bool InDomain(const Slice& key) const override { return key.size() >= kGroup; }
};

class LogGroupHint : public SliceTransform {
 public:
  static const char* kClassName() { return "raftflow.LogGroupHint"; }
  const char* Name() const override { return kClassName(); }

  Slice Transform(const Slice& key) const override {
    return Slice(key.data(), kGroup);
  }

  bool InDomain(const Slice& key) const override { return key.size() >= kGroup; }
};

template <typename T>
void add(rocksdb::ObjectLibrary& library) {
  library.AddFactory<const SliceTransform>(
      T::kClassName(),
      [](const std::string& /*uri*/,
         std::unique_ptr<const SliceTransform>* guard,
         std::string* /*errmsg*/) {
        guard->reset(new T());
        return guard->get();
      });
}

}  // namespace

extern "C" void raftflow_register_insert_hints() {
  auto& library = *rocksdb::ObjectLibrary::Default();
  add<StateRowHint>(library);
  add<LogGroupHint>(library);
}

#include "common/tokenizer/bpe_model.h"

#include <mutex>
#include <queue>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/tokenizer/byte_unicode.h"

namespace indexcache {
namespace {

absl::string_view AsAbsl(std::string_view s) { return absl::string_view(s.data(), s.size()); }

}  // namespace

absl::StatusOr<std::unique_ptr<BpeModel>> BpeModel::Create(
    absl::flat_hash_map<std::string, int32_t> vocab,
    const std::vector<std::pair<std::string, std::string>>& merges, Options options) {
  auto model = std::unique_ptr<BpeModel>(new BpeModel());
  model->vocab_ = std::move(vocab);
  model->options_ = options;
  for (int b = 0; b < 256; ++b) {
    auto it = model->vocab_.find(BytesToByteLevel(std::string(1, static_cast<char>(b))));
    model->byte_ids_[b] = it == model->vocab_.end() ? -1 : it->second;
  }
  model->merges_.reserve(merges.size());
  const auto id_of = [&](const std::string& token, size_t rank) -> absl::StatusOr<int32_t> {
    auto it = model->vocab_.find(token);
    if (it == model->vocab_.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("merge #", rank, " uses token '", token, "', which is not in the vocab"));
    }
    return it->second;
  };
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const auto& [left, right] = merges[rank];
    absl::StatusOr<int32_t> left_id = id_of(left, rank);
    if (!left_id.ok()) return left_id.status();
    absl::StatusOr<int32_t> right_id = id_of(right, rank);
    if (!right_id.ok()) return right_id.status();
    absl::StatusOr<int32_t> merged_id = id_of(left + right, rank);
    if (!merged_id.ok()) return merged_id.status();
    // A repeated pair keeps its last rank, as HF tokenizers' map construction does.
    model->merges_.insert_or_assign(PairKey(*left_id, *right_id),
                                    Merge{static_cast<int32_t>(rank), *merged_id});
  }
  return model;
}

std::vector<int32_t> BpeModel::MergeWord(std::string_view word) const {
  // A doubly linked list over the initial symbols; a merge folds the right symbol into the left
  // one (length 0 marks the removed one), so symbol 0 always heads the list.
  struct Symbol {
    int32_t id;
    int32_t prev;
    int32_t next;
    int32_t length;
  };
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  bool previous_unknown = false;
  for (char c : word) {
    const int32_t id = byte_ids_[static_cast<uint8_t>(c)];
    if (id >= 0) {
      symbols.push_back({id, 0, 0, 1});
      previous_unknown = false;
    } else if (options_.unk_id.has_value()) {
      if (options_.fuse_unk && previous_unknown) {
        ++symbols.back().length;
      } else {
        symbols.push_back({*options_.unk_id, 0, 0, 1});
      }
      previous_unknown = true;
    }
  }
  const int32_t n = static_cast<int32_t>(symbols.size());
  for (int32_t i = 0; i < n; ++i) {
    symbols[i].prev = i - 1;
    symbols[i].next = i + 1 < n ? i + 1 : -1;
  }

  // Candidate merges, lowest rank first, then leftmost. Entries go stale when a neighbour
  // changes; a popped entry is applied only if its pair still merges into the same token.
  struct Candidate {
    int32_t rank;
    int32_t pos;
    int32_t merged_id;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> queue;
  const auto push_pair = [&](int32_t left) {
    if (left < 0 || symbols[left].next < 0) return;
    auto it = merges_.find(PairKey(symbols[left].id, symbols[symbols[left].next].id));
    if (it != merges_.end()) queue.push({it->second.rank, left, it->second.merged_id});
  };
  for (int32_t i = 0; i + 1 < n; ++i) push_pair(i);

  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    Symbol& left = symbols[top.pos];
    if (left.length == 0 || left.next < 0) continue;
    const int32_t right_pos = left.next;
    Symbol& right = symbols[right_pos];
    auto it = merges_.find(PairKey(left.id, right.id));
    if (it == merges_.end() || it->second.merged_id != top.merged_id) continue;
    left.id = top.merged_id;
    left.length += right.length;
    left.next = right.next;
    right.length = 0;
    if (left.next >= 0) symbols[left.next].prev = top.pos;
    push_pair(left.prev);
    push_pair(top.pos);
  }

  std::vector<int32_t> ids;
  for (int32_t i = n > 0 ? 0 : -1; i >= 0; i = symbols[i].next) ids.push_back(symbols[i].id);
  return ids;
}

void BpeModel::EncodeWord(std::string_view word, std::vector<int32_t>* ids) const {
  if (word.empty()) return;
  const bool cacheable = word.size() <= kMaxCachedWordBytes;
  if (cacheable) {
    std::shared_lock lock(cache_mutex_);
    auto it = cache_.find(AsAbsl(word));
    if (it != cache_.end()) {
      ids->insert(ids->end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int32_t> word_ids;
  if (options_.ignore_merges) {
    auto it = vocab_.find(BytesToByteLevel(word));
    if (it != vocab_.end()) word_ids.push_back(it->second);
  }
  if (word_ids.empty()) word_ids = MergeWord(word);
  ids->insert(ids->end(), word_ids.begin(), word_ids.end());
  if (cacheable) {
    std::unique_lock lock(cache_mutex_);
    if (cache_.size() >= kMaxCacheEntries) cache_.clear();
    cache_.emplace(std::string(word), std::move(word_ids));
  }
}

}  // namespace indexcache

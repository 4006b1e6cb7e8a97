// The compiled SlotMap of embtable._C: an open-addressing hash map from int64 ids to slots of a
// dense slot tensor, with admission counting and an eviction policy (LRU / LFU / TTL / CLOCK).
// All state lives in tensors owned by embtable/storage/slots.py; these ops read and update it
// in place.  The pure-Python oracle, and the specification of every decision taken here, is
// embtable/storage/_slots_reference.py: both must agree id by id, slot by slot.
//
// Ops (registered in this translation unit):
//   slot_lookup(ids, state[], config[]) -> (slots, new_ids, new_slots, evicted_ids, evicted_slots)
//   slot_find(ids, index) -> slots                       (read-only, -1 where absent)
//   slot_table_build(keys, values, size) -> table        (a [size, 2] (key, value) table)
//   slot_init_rows(ids, dim, seed, std) -> rows           (float32 rows from (seed, id))
//   slot_init_rows_into(weight, slots, ids, seed, std)    (the same rows, into weight[slots])
//   slot_fresh_rows(weight, offset, slots, ids, seed, std, states[], fresh[], values?)
//                                                        (new rows and their optimizer state)
//
// Tables: `size` (a power of two) rows of (key, value) int64 pairs, linear probing, value -1
// marks an empty row, deletion by backward shift (no tombstones).  The map's index holds
// (id, slot); the exact admission counter holds (id, count).
//
// A call is sequential (one thread), so decisions cannot depend on the thread count.  The
// remap is bound by the latency of random reads in the index and the slot table, so a call
// of at most `capacity` ids makes one pass over its positions (each probes the index and
// updates a hit's slot record; only the misses are deduplicated, in a small cache-resident
// table), a larger call deduplicates all its ids first; every pass over the big tables
// prefetches kAhead entries ahead.

#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <optional>
#include <vector>

namespace embtable {
namespace {

constexpr const char* kApi = "SlotMap.lookup";
constexpr int64_t kEmpty = -1;
constexpr int kAhead = 32;  // prefetch distance in ids

// Policy codes shared with embtable/storage/slots.py (_POLICY_CODES).
constexpr int64_t kLru = 0;
constexpr int64_t kLfu = 1;
constexpr int64_t kTtl = 2;
constexpr int64_t kClock = 3;

// Offsets into the int64 `meta` tensor (shared with slots.py).
enum Meta : int64_t {
  kCalls = 0, kClockStep, kHand, kAdmitted, kEvicted, kDefaultHits, kLookups, kSize,
  kHead, kTail, kExactSize, kCursor, kSeq, kMetaLen
};

// The state list, in order (shared with slots.py).
enum StateIndex : int64_t {
  sMeta = 0, sSlots, sHeapSlot, sHeapFreq, sHeapCall, sIndex, sSketch, sSeeds, sExact, sQueue,
  sStateLen
};

// One slot's row of the [capacity, 8] int64 `slots` tensor: one 64-byte cache line.
// (fSpare0 / fSpare1 are unused: they pad the record to one cache line.)  fSeq: the position
// of the slot's current entry in the recency queue (lru / ttl).
enum SlotField : int64_t { fId = 0, fFreq, fLastCall, fLastStep, fSpare0, fSpare1, fSeq, fFlags, kFields };
constexpr int64_t kLive = 1;
constexpr int64_t kRef = 2;

// splitmix64's finalizer without the increment (embtable.nn.hashed.mix64).
inline uint64_t mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

inline uint64_t splitmix64(uint64_t x) {
  uint64_t z = x + 0x9E3779B97F4A7C15ULL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// Home row of a key in a table of 2^bits rows (Fibonacci hashing of a pre-mixed key).
inline uint64_t home(int64_t key, int bits) {
  uint64_t u = static_cast<uint64_t>(key);
  u ^= u >> 29;
  return (u * 0x9E3779B97F4A7C15ULL) >> (64 - bits);
}

struct Table {
  int64_t* rows;  // [size, 2]: key, value
  uint64_t mask;
  int bits;

  explicit Table(const at::Tensor& t) {
    rows = t.data_ptr<int64_t>();
    const uint64_t size = static_cast<uint64_t>(t.size(0));
    mask = size - 1;
    bits = 0;
    while ((uint64_t{1} << bits) < size) ++bits;
  }
  void prefetch(int64_t key) const { __builtin_prefetch(rows + 2 * home(key, bits), 0, 1); }
  // The home row's line and, when the home row is not first in its line, the next line
  // (where a deletion's backward shift or an insertion's probe usually ends).
  void prefetch_run(int64_t key) const {
    const uint64_t h = home(key, bits);
    __builtin_prefetch(rows + 2 * h, 1, 1);
    __builtin_prefetch(rows + 2 * ((h + 3) & mask), 1, 1);
  }
  // Row of `key`, or the empty row where it would go.
  uint64_t probe(int64_t key) const {
    uint64_t i = bits ? home(key, bits) : 0;
    while (rows[2 * i + 1] != kEmpty && rows[2 * i] != key) i = (i + 1) & mask;
    return i;
  }
  int64_t get(int64_t key) const { return rows[2 * probe(key) + 1]; }
  void put(int64_t key, int64_t value) {
    const uint64_t i = probe(key);
    rows[2 * i] = key;
    rows[2 * i + 1] = value;
  }
  void erase(int64_t key) {
    uint64_t i = probe(key);
    if (rows[2 * i + 1] == kEmpty) return;
    uint64_t j = i;
    while (true) {
      j = (j + 1) & mask;
      if (rows[2 * j + 1] == kEmpty) break;
      const uint64_t k = home(rows[2 * j], bits);
      const bool stays = (i <= j) ? (i < k && k <= j) : (i < k || k <= j);
      if (stays) continue;
      rows[2 * i] = rows[2 * j];
      rows[2 * i + 1] = rows[2 * j + 1];
      i = j;
    }
    rows[2 * i] = 0;
    rows[2 * i + 1] = kEmpty;
  }
};

// Per-thread scratch of one call, reused between calls.
struct Scratch {
  std::vector<int64_t> uids, ucount, uslot, pos;  // distinct ids, counts, slots; positions
  std::vector<int64_t> ids, count, estimate, occ;  // the misses (occ: their distinct index)
  std::vector<int64_t> mslot;    // the misses' new slots (-1: not admitted)
  std::vector<int64_t> aside;    // LFU: heap entries set aside (pinned) during a call
  std::vector<int32_t> tab32;    // dedup table of the call's ids: distinct index, -1 empty
  std::vector<int64_t> uhome;    // rows of tab32 in use (cleared after the call)
};

Scratch& scratch() {
  static thread_local Scratch s;
  return s;
}

struct Map {
  int64_t* meta;
  int64_t* slots;  // [capacity, kFields]
  int64_t* heap_slot;
  int64_t* heap_freq;
  int64_t* heap_call;
  int64_t* queue;  // recency queue (lru / ttl): a ring of slots, power-of-two size
  uint64_t queue_mask;
  int64_t capacity, policy, ttl;

  int64_t* row(int64_t s) const { return slots + s * kFields; }

  // ---------------------------------------------------------------- recency queue
  // The recency order (lru / ttl) is a queue of slots: using a slot appends it at the tail
  // and stores the entry's absolute position in the slot's fSeq; older entries of the slot
  // become stale (fSeq differs) and are skipped when they reach the head.  Appends are
  // sequential writes (no neighbours to relink), stale entries are dropped in order, and a
  // full ring is compacted in place.  meta[kHead] / meta[kTail] are absolute positions.
  bool current(int64_t pos) const {
    const int64_t s = queue[static_cast<uint64_t>(pos) & queue_mask];
    return row(s)[fSeq] == pos && (row(s)[fFlags] & kLive);
  }
  // (Both passes visit the slot records at random: each prefetches kAhead entries ahead.)
  void compact() {
    std::vector<int64_t> kept;
    kept.reserve(static_cast<size_t>(meta[kSize]));
    for (int64_t pos = meta[kHead]; pos < meta[kTail]; ++pos) {
      if (pos + kAhead < meta[kTail]) {
        __builtin_prefetch(row(queue[static_cast<uint64_t>(pos + kAhead) & queue_mask]), 0, 1);
      }
      if (current(pos)) kept.push_back(queue[static_cast<uint64_t>(pos) & queue_mask]);
    }
    for (size_t i = 0; i < kept.size(); ++i) {
      if (i + kAhead < kept.size()) __builtin_prefetch(row(kept[i + kAhead]), 1, 1);
      queue[i] = kept[i];
      row(kept[i])[fSeq] = static_cast<int64_t>(i);
    }
    meta[kHead] = 0;
    meta[kTail] = static_cast<int64_t>(kept.size());
  }
  void append(int64_t s) {
    if (meta[kTail] - meta[kHead] == static_cast<int64_t>(queue_mask + 1)) compact();
    const int64_t pos = meta[kTail]++;
    queue[static_cast<uint64_t>(pos) & queue_mask] = s;
    row(s)[fSeq] = pos;
  }
  // The least recent live slot (the queue's first current entry), or -1 when empty.
  int64_t oldest() {
    while (meta[kHead] < meta[kTail]) {
      const int64_t ahead = meta[kHead] + kAhead;
      if (ahead < meta[kTail]) __builtin_prefetch(row(queue[static_cast<uint64_t>(ahead) & queue_mask]), 0, 1);
      if (current(meta[kHead])) return queue[static_cast<uint64_t>(meta[kHead]) & queue_mask];
      ++meta[kHead];
    }
    return -1;
  }

  // ---------------------------------------------------------------- LFU heap (lazy keys)
  bool less(int64_t a, int64_t b) const {  // heap positions
    if (heap_freq[a] != heap_freq[b]) return heap_freq[a] < heap_freq[b];
    if (heap_call[a] != heap_call[b]) return heap_call[a] < heap_call[b];
    return heap_slot[a] < heap_slot[b];
  }
  void swap_pos(int64_t a, int64_t b) {
    std::swap(heap_slot[a], heap_slot[b]);
    std::swap(heap_freq[a], heap_freq[b]);
    std::swap(heap_call[a], heap_call[b]);
  }
  void sift_down(int64_t i, int64_t n) {
    while (true) {
      int64_t m = i;
      const int64_t l = 2 * i + 1, r = l + 1;
      if (l < n && less(l, m)) m = l;
      if (r < n && less(r, m)) m = r;
      if (m == i) return;
      swap_pos(i, m);
      i = m;
    }
  }
  void push(int64_t& n, int64_t s) {
    int64_t i = n++;
    heap_slot[i] = s;
    heap_freq[i] = row(s)[fFreq];
    heap_call[i] = row(s)[fLastCall];
    while (i > 0) {
      const int64_t p = (i - 1) / 2;
      if (!less(i, p)) break;
      swap_pos(i, p);
      i = p;
    }
  }
  void pop(int64_t& n) {
    --n;
    if (n > 0) {
      heap_slot[0] = heap_slot[n];
      heap_freq[0] = heap_freq[n];
      heap_call[0] = heap_call[n];
      sift_down(0, n);
    }
  }

  // A victim among the slots not used by the current call, or -1 (TTL: nothing expired).
  int64_t victim(int64_t& heap_n, std::vector<int64_t>& aside) {
    const int64_t pinned = meta[kCalls];
    if (policy == kLru || policy == kTtl) {
      const int64_t s = oldest();
      TORCH_CHECK(s >= 0 && row(s)[fLastCall] != pinned, kApi, ": internal error, victim is pinned");
      if (policy == kTtl && !(meta[kClockStep] - row(s)[fLastStep] > ttl)) return -1;
      ++meta[kHead];  // the victim's entry leaves the queue
      return s;
    }
    if (policy == kLfu) {
      while (true) {
        TORCH_CHECK(heap_n > 0, kApi, ": internal error, empty heap");
        const int64_t s = heap_slot[0];
        const int64_t* r = row(s);
        if (r[fLastCall] == pinned) {
          aside.push_back(s);
          pop(heap_n);
        } else if (heap_freq[0] != r[fFreq] || heap_call[0] != r[fLastCall]) {
          heap_freq[0] = r[fFreq];
          heap_call[0] = r[fLastCall];
          sift_down(0, heap_n);
        } else {
          pop(heap_n);
          return s;
        }
      }
    }
    while (true) {  // clock
      const int64_t s = meta[kHand];
      meta[kHand] = (s + 1) % capacity;
      int64_t* r = row(s);
      if (r[fLastCall] == pinned) continue;
      if (r[fFlags] & kRef) {
        r[fFlags] &= ~kRef;
        continue;
      }
      return s;
    }
  }
};

void check_state(const std::vector<at::Tensor>& state) {
  TORCH_CHECK(static_cast<int64_t>(state.size()) == sStateLen, kApi, ": expected ", sStateLen,
              " state tensors, got ", state.size());
  for (const auto& t : state) {
    TORCH_CHECK(t.device().is_cpu() && t.is_contiguous(), kApi,
                ": state tensors must be contiguous CPU tensors");
  }
  TORCH_CHECK(state[sMeta].numel() >= kMetaLen, kApi, ": meta too short");
  TORCH_CHECK(state[sSlots].dim() == 2 && state[sSlots].size(1) == kFields, kApi,
              ": slots must be [capacity, ", kFields, "]");
  const int64_t q = state[sQueue].numel();
  TORCH_CHECK((q & (q - 1)) == 0 && (q == 0 || q >= 2 * state[sSlots].size(0)), kApi,
              ": the recency queue must be empty or a power of two >= 2 * capacity, got ", q);
}

// The call's distinct ids in first-occurrence order (sc.uids) with their occurrence counts
// (sc.ucount): a small open-addressing table of int32 distinct indices (the key is read
// back from sc.uids), at most 3/4 full, reused between calls and cleared through the rows
// it touched.
struct Distinct {
  Scratch& sc;
  uint64_t mask;
  int bits;
  int32_t* tab;
  int64_t *uids, *ucount, *uhome;
  int64_t size = 0;
  Distinct(Scratch& s, int64_t n) : sc(s) {
    bits = 4;
    while ((int64_t{1} << bits) < (4 * n) / 3) ++bits;
    if (sc.tab32.size() != (size_t{1} << bits)) sc.tab32.assign(size_t{1} << bits, -1);
    tab = sc.tab32.data();
    mask = (uint64_t{1} << bits) - 1;
    // Room for n + 1 entries: add() writes one entry past the end unconditionally.
    sc.uids.resize(static_cast<size_t>(n) + 1);
    sc.ucount.resize(static_cast<size_t>(n) + 1);
    sc.uhome.resize(static_cast<size_t>(n) + 1);
    uids = sc.uids.data();
    ucount = sc.ucount.data();
    uhome = sc.uhome.data();
  }
  ~Distinct() {
    for (int64_t d = 0; d < size; ++d) tab[uhome[d]] = -1;
  }
  // The number of distinct ids (sc.uids / sc.ucount keep their n + 1 entries, so that the
  // next call of the same size does not re-initialize them).
  int64_t finish() const { return size; }
  void prefetch(int64_t key) const { __builtin_prefetch(tab + home(key, bits), 1, 3); }
  // The distinct index of `key` (added if new); counts one occurrence.  Whether the id is
  // new is not predictable, so that case is handled without a branch: the new entry is
  // written in any case and kept only by advancing `size`.
  int64_t add(int64_t key) {
    uint64_t h = home(key, bits);
    int32_t v;
    while ((v = tab[h]) >= 0 && uids[v] != key) h = (h + 1) & mask;
    const bool fresh = v < 0;
    const int64_t d = fresh ? size : v;
    tab[h] = static_cast<int32_t>(d);
    uids[size] = key;
    uhome[size] = static_cast<int64_t>(h);
    const int64_t before = ucount[d];
    ucount[d] = (fresh ? 0 : before) + 1;
    size += fresh;
    return d;
  }
};

// LFU aging: every live slot's count is halved (rounded down), then the heap is rebuilt
// with the slots' current keys (halving can reorder ties, and the lazy keys of the heap
// must stay lower bounds of the slots' keys).
void decay_counts(Map& map, int64_t heap_n) {
  for (int64_t s = 0; s < map.capacity; ++s) {
    int64_t* r = map.row(s);
    if (r[fFlags] & kLive) r[fFreq] >>= 1;
  }
  if (map.policy != kLfu) return;
  for (int64_t i = 0; i < heap_n; ++i) {
    const int64_t* r = map.row(map.heap_slot[i]);
    map.heap_freq[i] = r[fFreq];
    map.heap_call[i] = r[fLastCall];
  }
  for (int64_t i = heap_n / 2 - 1; i >= 0; --i) map.sift_down(i, heap_n);
}

// config: capacity, policy, ttl, min_count, exact_counts[, missing[, decay_every]]
//   missing: the value returned for ids without a slot (default -1);
//   decay_every: LFU aging period in calls (0 or absent: no aging).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> slot_lookup_cpu(
    const at::Tensor& ids_in, at::TensorList state_list, at::IntArrayRef config) {
  std::vector<at::Tensor> state(state_list.begin(), state_list.end());
  check_state(state);
  TORCH_CHECK(config.size() >= 5, kApi, ": config needs 5 entries");
  TORCH_CHECK(ids_in.scalar_type() == at::kLong, kApi, ": ids must be int64, got ",
              ids_in.scalar_type());
  const at::Tensor ids_t = ids_in.contiguous();
  const int64_t n = ids_t.numel();
  TORCH_CHECK_VALUE(n < (int64_t{1} << 31), kApi, ": a call takes fewer than 2**31 ids, got ", n);
  const int64_t* ids = ids_t.data_ptr<int64_t>();

  Map map;
  map.meta = state[sMeta].data_ptr<int64_t>();
  map.slots = state[sSlots].data_ptr<int64_t>();
  map.heap_slot = state[sHeapSlot].data_ptr<int64_t>();
  map.heap_freq = state[sHeapFreq].data_ptr<int64_t>();
  map.heap_call = state[sHeapCall].data_ptr<int64_t>();
  map.queue = state[sQueue].data_ptr<int64_t>();
  map.queue_mask = static_cast<uint64_t>(std::max<int64_t>(state[sQueue].numel(), 1)) - 1;
  map.capacity = config[0];
  map.policy = config[1];
  map.ttl = config[2];
  const int64_t min_count = config[3];
  const bool exact = config[4] != 0;
  const int64_t missing = config.size() > 5 ? config[5] : -1;
  const int64_t decay_every = config.size() > 6 ? config[6] : 0;
  TORCH_CHECK(decay_every >= 0, kApi, ": decay_every must be >= 0, got ", decay_every);
  const bool counting = min_count > 1;
  const bool listed = map.policy == kLru || map.policy == kTtl;
  int64_t* meta = map.meta;
  Table index(state[sIndex]);
  Scratch& sc = scratch();

  // Admission counters: every increment of the call first, then the estimates.
  int32_t* sketch = nullptr;
  int64_t width = 0, depth = 0;
  const int64_t* seeds = nullptr;
  if (counting && !exact) {
    sketch = state[sSketch].data_ptr<int32_t>();
    depth = state[sSketch].size(0);
    width = state[sSketch].size(1);
    seeds = state[sSeeds].data_ptr<int64_t>();
  }
  Table exact_table(state[sExact]);
  auto add_counts = [&](int64_t sign) {
    if (exact && sign > 0) {
      TORCH_CHECK(2 * (meta[kExactSize] + static_cast<int64_t>(sc.ids.size())) <=
                      state[sExact].size(0), kApi, ": internal error, exact counter table too small");
    }
    for (size_t d = 0; d < sc.ids.size(); ++d) {
      const int64_t k = sign * sc.count[d];
      if (exact) {
        int64_t* r = exact_table.rows + 2 * exact_table.probe(sc.ids[d]);
        if (r[1] == kEmpty) {
          r[0] = sc.ids[d];
          r[1] = k;
          meta[kExactSize] += 1;
        } else {
          r[1] += k;
        }
        if (r[1] == 0) {
          exact_table.erase(sc.ids[d]);
          meta[kExactSize] -= 1;
        }
      } else {
        const uint64_t key = static_cast<uint64_t>(sc.ids[d]);
        for (int64_t r = 0; r < depth; ++r) {
          const uint64_t c = splitmix64(key ^ static_cast<uint64_t>(seeds[r])) & (width - 1);
          sketch[r * width + c] += static_cast<int32_t>(k);
        }
      }
    }
  };
  // Estimates of the missing ids (after add_counts(+1)); returns how many are admissible.
  auto estimate = [&]() {
    const size_t u = sc.ids.size();
    sc.estimate.resize(u);
    int64_t admissible = 0;
    for (size_t d = 0; d < u; ++d) {
      int64_t est = sc.count[d];
      if (counting && exact) {
        est = std::max<int64_t>(exact_table.get(sc.ids[d]), 0);
      } else if (counting) {
        const uint64_t key = static_cast<uint64_t>(sc.ids[d]);
        est = INT64_MAX;
        for (int64_t r = 0; r < depth; ++r) {
          const uint64_t c = splitmix64(key ^ static_cast<uint64_t>(seeds[r])) & (width - 1);
          est = std::min<int64_t>(est, sketch[r * width + c]);
        }
      }
      sc.estimate[d] = est;
      admissible += est >= min_count;
    }
    return admissible;
  };

  // Two paths take the same decisions (the oracle's rules, in the same order):
  //  - a call of at most `capacity` ids cannot overflow the map: one pass over the positions
  //    probes each id in the index (prefetched kAhead ahead) and writes its slot straight to
  //    the output; a hit's record is prefetched when its probe finds the slot and updated
  //    kLag positions later: freq += 1 per occurrence (the same count as += its occurrences),
  //    and at its first occurrence in the call (fLastCall != call) last call / step, the
  //    reference bit and the recency append, so hits still reach the queue in first-occurrence
  //    order.  Only the misses go through the small distinct table (their first-occurrence
  //    order and counts, for admission).
  //  - a larger call first deduplicates its ids (the overflow check needs the distinct count),
  //    checks the capacity without changing anything, then probes and updates once per
  //    distinct id and finally gathers each position's slot.
  at::Tensor slots_out = at::empty({n}, ids_t.options());
  int64_t* out = slots_out.data_ptr<int64_t>();
  constexpr int64_t kLag = 16;
  int64_t call = 0, clock = 0;
  auto begin_call = [&]() {  // the call's clock advances (LFU aging first)
    call = ++meta[kCalls];
    clock = meta[kClockStep];
    if (decay_every > 0 && call % decay_every == 0) decay_counts(map, meta[kSize]);
  };
  Distinct distinct(sc, n);
  const bool one_pass = n <= map.capacity;
  int64_t u = 0, num_miss_pos = 0;
  if (one_pass) {
    // 1. The one pass over the positions (see above); sc.pos: the misses' positions,
    //    sc.occ: their distinct-miss index.
    begin_call();
    sc.pos.resize(static_cast<size_t>(n));
    sc.occ.resize(static_cast<size_t>(n));
    int64_t* mpos = sc.pos.data();
    int64_t* mocc = sc.occ.data();
    auto visit = [&](int64_t i) {
      const int64_t s = out[i];
      if (s >= 0) {
        int64_t* r = map.row(s);
        r[fFreq] += 1;
        if (r[fLastCall] != call) {
          r[fLastCall] = call;
          r[fLastStep] = clock;
          r[fFlags] |= kRef;
          if (listed) map.append(s);
        }
      } else {
        mpos[num_miss_pos] = i;
        mocc[num_miss_pos] = distinct.add(ids[i]);
        ++num_miss_pos;
      }
    };
    for (int64_t i = 0; i < n; ++i) {
      if (i + kAhead < n) index.prefetch(ids[i + kAhead]);
      const int64_t s = index.get(ids[i]);
      out[i] = s;
      if (s >= 0) __builtin_prefetch(map.row(s), 1, 3);
      if (i >= kLag) visit(i - kLag);
    }
    for (int64_t i = std::max<int64_t>(n - kLag, 0); i < n; ++i) visit(i);
    u = distinct.finish();
    sc.ids.assign(sc.uids.begin(), sc.uids.begin() + u);
    sc.count.assign(sc.ucount.begin(), sc.ucount.begin() + u);
    if (counting) add_counts(+1);
    estimate();
  } else {
    // 1. The distinct ids, in first-occurrence order (sc.uids / sc.ucount), and each
    //    position's distinct index (sc.pos).  Only this small table is probed per position.
    sc.pos.resize(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      if (i + kAhead < n) distinct.prefetch(ids[i + kAhead]);
      sc.pos[i] = distinct.add(ids[i]);
    }
    u = distinct.finish();

    // 2. The index probes (read only; one per distinct id, prefetched kAhead ahead), then the
    //    misses (sc.ids / sc.count, sc.occ: their distinct index).
    sc.uslot.resize(static_cast<size_t>(u));
    for (int64_t d = 0; d < u; ++d) {
      if (d + kAhead < u) index.prefetch(sc.uids[d + kAhead]);
      sc.uslot[d] = index.get(sc.uids[d]);
    }
    sc.ids.clear();
    sc.count.clear();
    sc.occ.clear();
    for (int64_t d = 0; d < u; ++d) {
      if (sc.uslot[d] < 0) {
        sc.ids.push_back(sc.uids[d]);
        sc.count.push_back(sc.ucount[d]);
        sc.occ.push_back(d);
      }
    }

    // 3. More distinct ids than the capacity may overflow it: check without changing anything.
    if (u > map.capacity) {
      const int64_t hits = u - static_cast<int64_t>(sc.ids.size());
      if (counting) add_counts(+1);
      const int64_t admissible = estimate();
      if (counting) add_counts(-1);
      TORCH_CHECK_VALUE(hits + admissible <= map.capacity, kApi,
                        ": a call may use at most capacity=", map.capacity,
                        " distinct admitted ids, got ", hits + admissible,
                        "; split the batch or raise the capacity");
    }

    // 4. The call begins, then the hits in first-occurrence order: counts, recency (the slot
    //    moves to the recent end); each record prefetched kLag ids ahead.
    begin_call();
    auto hit = [&](int64_t d) {
      const int64_t s = sc.uslot[d];
      if (s < 0) return;
      int64_t* r = map.row(s);
      r[fFreq] += sc.ucount[d];
      r[fLastCall] = call;
      r[fLastStep] = clock;
      r[fFlags] |= kRef;
      if (listed) map.append(s);
    };
    for (int64_t d = 0; d < u; ++d) {
      if (d + kLag < u && sc.uslot[d + kLag] >= 0) __builtin_prefetch(map.row(sc.uslot[d + kLag]), 1, 3);
      hit(d);
    }

    // 5. Admission counts of the misses.
    if (counting) add_counts(+1);
    estimate();
  }

  // 6. Admissions, in first-occurrence order: each admissible miss takes the lowest free
  //    slot or a victim's (sc.mslot; -1: not admitted); then the victims' ids leave the index
  //    and the new ids enter it (one batch of probes each, prefetched: the index's layout may
  //    differ from one insertion at a time, its content and every decision do not).
  const int64_t num_miss = static_cast<int64_t>(sc.ids.size());
  sc.mslot.assign(static_cast<size_t>(num_miss), -1);
  std::vector<int64_t> new_ids, new_slots, ev_ids, ev_slots;
  int64_t heap_n = meta[kSize];
  sc.aside.clear();
  for (int64_t m = 0; m < num_miss; ++m) {
    if (sc.estimate[m] < min_count) continue;
    int64_t s;
    while (meta[kCursor] < map.capacity && (map.row(meta[kCursor])[fFlags] & kLive)) ++meta[kCursor];
    if (meta[kCursor] < map.capacity) {
      s = meta[kCursor];
      meta[kSize] += 1;
    } else {
      s = map.victim(heap_n, sc.aside);
      if (s < 0) break;
      ev_ids.push_back(map.row(s)[fId]);
      ev_slots.push_back(s);
    }
    const int64_t key = sc.ids[m];
    int64_t* r = map.row(s);
    r[fId] = key;
    r[fFreq] = sc.estimate[m];
    r[fLastCall] = call;
    r[fLastStep] = clock;
    r[fFlags] = kLive | kRef;
    if (listed) map.append(s);
    if (map.policy == kLfu) sc.aside.push_back(s);
    sc.mslot[m] = s;
    new_ids.push_back(key);
    new_slots.push_back(s);
  }
  if (map.policy == kLfu) {
    for (const int64_t s : sc.aside) map.push(heap_n, s);
    TORCH_CHECK(heap_n == meta[kSize], kApi, ": internal error, heap size ", heap_n, " != ",
                meta[kSize]);
  }
  const int64_t num_ev = static_cast<int64_t>(ev_ids.size());
  for (int64_t e = 0; e < num_ev; ++e) {
    if (e + kAhead < num_ev) index.prefetch_run(ev_ids[e + kAhead]);
    index.erase(ev_ids[e]);
  }
  const int64_t num_new = static_cast<int64_t>(new_ids.size());
  for (int64_t k = 0; k < num_new; ++k) {
    if (k + kAhead < num_new) index.prefetch_run(new_ids[k + kAhead]);
    index.put(new_ids[k], new_slots[k]);
  }

  // 7. The misses' slots (`missing` where an id has none) into the output, and the statistics.
  int64_t defaults = 0;
  if (one_pass) {
    const int64_t* mpos = sc.pos.data();
    const int64_t* mocc = sc.occ.data();
    for (int64_t j = 0; j < num_miss_pos; ++j) {
      const int64_t s = sc.mslot[mocc[j]];
      defaults += s < 0;
      out[mpos[j]] = s < 0 ? missing : s;
    }
  } else {
    for (int64_t m = 0; m < num_miss; ++m) sc.uslot[sc.occ[m]] = sc.mslot[m];
    for (int64_t d = 0; d < u; ++d) {
      if (sc.uslot[d] < 0) {
        defaults += sc.ucount[d];
        sc.uslot[d] = missing;
      }
    }
    const int64_t* uslot = sc.uslot.data();
    const int64_t* pos = sc.pos.data();
    for (int64_t i = 0; i < n; ++i) out[i] = uslot[pos[i]];
  }
  meta[kLookups] += n;
  meta[kDefaultHits] += defaults;
  meta[kAdmitted] += num_new;
  meta[kEvicted] += num_ev;
  auto to_tensor = [&](const std::vector<int64_t>& v) {
    at::Tensor t = at::empty({static_cast<int64_t>(v.size())}, ids_t.options());
    if (!v.empty()) std::memcpy(t.data_ptr<int64_t>(), v.data(), v.size() * sizeof(int64_t));
    return t;
  };
  return {slots_out, to_tensor(new_ids), to_tensor(new_slots), to_tensor(ev_ids),
          to_tensor(ev_slots)};
}

at::Tensor slot_find_cpu(const at::Tensor& ids_in, const at::Tensor& index_t) {
  TORCH_CHECK(ids_in.scalar_type() == at::kLong, "SlotMap.find: ids must be int64, got ",
              ids_in.scalar_type());
  const at::Tensor ids_t = ids_in.contiguous();
  const int64_t n = ids_t.numel();
  const int64_t* ids = ids_t.data_ptr<int64_t>();
  const Table index(index_t);
  at::Tensor slots = at::empty({n}, ids_t.options());
  int64_t* out = slots.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    if (i + kAhead < n) index.prefetch(ids[i + kAhead]);
    out[i] = index.get(ids[i]);
  }
  return slots;
}

at::Tensor slot_table_build_cpu(const at::Tensor& keys_in, const at::Tensor& values_in,
                                int64_t size) {
  TORCH_CHECK(size >= 1 && (size & (size - 1)) == 0, "slot_table_build: size must be a power ",
              "of two, got ", size);
  TORCH_CHECK(keys_in.numel() == values_in.numel() && 2 * keys_in.numel() <= size,
              "slot_table_build: ", keys_in.numel(), " pairs do not fit half of ", size, " rows");
  const at::Tensor keys = keys_in.to(at::kLong).contiguous();
  const at::Tensor values = values_in.to(at::kLong).contiguous();
  at::Tensor table = at::empty({size, 2}, keys.options());
  table.select(1, 0).zero_();
  table.select(1, 1).fill_(kEmpty);
  Table t(table);
  const int64_t* k = keys.data_ptr<int64_t>();
  const int64_t* v = values.data_ptr<int64_t>();
  for (int64_t i = 0; i < keys.numel(); ++i) {
    TORCH_CHECK(v[i] != kEmpty, "slot_table_build: value -1 is reserved for empty rows");
    t.put(k[i], v[i]);
  }
  return table;
}

// Rows ~N(0, std^2) that depend only on (seed, id, column) (the twin of
// embtable.nn.dynamic.init_rows): one splitmix64 hash per entry, its four 16-bit quarters
// summed (Irwin-Hall: mean 2, variance 1/3), centred and scaled by sqrt(3) * std.  Every
// operation is exact or one IEEE rounding in the same order as the PyTorch twin (the first
// product is a power-of-two scaling), so both give the same bits.
constexpr double kSqrt3 = 1.7320508075688772;

// One entry of (seed, id)'s row: column c of the row whose key is mix(id ^ salt).
inline float init_entry(uint64_t key, int64_t c, double std_dev) {
  const uint64_t z = mix(key + static_cast<uint64_t>(c + 1) * 0x9E3779B97F4A7C15ULL);
  const int64_t sum = static_cast<int64_t>((z & 0xFFFF) + ((z >> 16) & 0xFFFF) +
                                           ((z >> 32) & 0xFFFF) + (z >> 48));
  const double centred = static_cast<double>(sum + 2) * (1.0 / 65536.0) - 2.0;
  return static_cast<float>(centred * kSqrt3 * std_dev);
}

// Eight entries at once: the same operations lane by lane (GCC / Clang vector extensions:
// one 512-bit register per step where AVX-512 is enabled, split into narrower ones where
// not), so every entry has init_entry's bits.  The compiler's own vectorization of the
// scalar loop used 256-bit registers only (-march=native prefers them), about 1.6 times
// slower per row on this project's machines.
typedef uint64_t u64x8 __attribute__((vector_size(64)));
typedef double f64x8 __attribute__((vector_size(64)));
typedef float f32x8 __attribute__((vector_size(32)));

// mix() lane by lane, in place (a 64-byte vector is not passed or returned by value: without
// AVX-512 that would change the ABI, and GCC warns, -Wpsabi).
inline void mix8(u64x8& z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  z ^= z >> 31;
}

// One row: `dim` entries of (seed, id)'s row into `o`.
inline void init_row(float* __restrict o, int64_t id, uint64_t salt, int64_t dim, double std_dev) {
  const uint64_t key = mix(static_cast<uint64_t>(id) ^ salt);
  // (c + 1) * golden of the eight columns, advanced by addition (the same value mod 2**64).
  constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ULL;
  u64x8 col = u64x8{1, 2, 3, 4, 5, 6, 7, 8} * kGolden;
  int64_t c = 0;
  for (; c + 8 <= dim; c += 8, col += 8 * kGolden) {
    u64x8 z = key + col;
    mix8(z);
    const u64x8 sum = (z & 0xFFFF) + ((z >> 16) & 0xFFFF) + ((z >> 32) & 0xFFFF) + (z >> 48);
    const f64x8 centred = __builtin_convertvector(sum + 2, f64x8) * (1.0 / 65536.0) - 2.0;
    const f32x8 out = __builtin_convertvector(centred * kSqrt3 * std_dev, f32x8);
    std::memcpy(o + c, &out, sizeof(out));
  }
  for (; c < dim; ++c) o[c] = init_entry(key, c, std_dev);
}

at::Tensor slot_init_rows_cpu(const at::Tensor& ids_in, int64_t dim, int64_t seed, double std_dev) {
  TORCH_CHECK(ids_in.scalar_type() == at::kLong, "init_rows: ids must be int64");
  TORCH_CHECK(dim >= 0, "init_rows: dim must be >= 0, got ", dim);
  const at::Tensor ids_t = ids_in.contiguous();
  const int64_t n = ids_t.numel();
  const int64_t* ids = ids_t.data_ptr<int64_t>();
  at::Tensor out = at::empty({n, dim}, ids_t.options().dtype(at::kFloat));
  float* o = out.data_ptr<float>();
  const uint64_t salt = mix(static_cast<uint64_t>(seed));
  for (int64_t i = 0; i < n; ++i) init_row(o + i * dim, ids[i], salt, dim, std_dev);
  return out;
}

// In place: row slots[i] of the float32 table `weight` becomes ids[i]'s initial row (the
// same values as slot_init_rows, written straight into the table, rows prefetched ahead).
void slot_init_rows_into_cpu(const at::Tensor& weight, const at::Tensor& slots_in,
                             const at::Tensor& ids_in, int64_t seed, double std_dev) {
  TORCH_CHECK(weight.scalar_type() == at::kFloat && weight.dim() == 2 && weight.is_contiguous(),
              "init_rows: weight must be a contiguous 2-D float32 tensor");
  TORCH_CHECK(ids_in.scalar_type() == at::kLong && slots_in.scalar_type() == at::kLong &&
                  ids_in.numel() == slots_in.numel(),
              "init_rows: ids and slots must be int64 tensors of one length");
  const at::Tensor ids_t = ids_in.contiguous(), slots_t = slots_in.contiguous();
  const int64_t n = ids_t.numel(), rows = weight.size(0), dim = weight.size(1);
  const int64_t* ids = ids_t.data_ptr<int64_t>();
  const int64_t* slots = slots_t.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK(slots[i] >= 0 && slots[i] < rows, "init_rows: slot ", slots[i], " outside ", rows, " rows");
  }
  float* w = weight.data_ptr<float>();
  const uint64_t salt = mix(static_cast<uint64_t>(seed));
  constexpr int64_t kLine = 64 / sizeof(float);
  for (int64_t i = 0; i < n; ++i) {
    if (i + kAhead < n) {  // every cache line of the row kAhead rows ahead
      const float* ahead = w + slots[i + kAhead] * dim;
      for (int64_t c = 0; c < dim; c += kLine) __builtin_prefetch(ahead + c, 1, 1);
    }
    init_row(w + slots[i] * dim, ids[i], salt, dim, std_dev);
  }
}

// A dynamic table's new rows, in one pass: row `offset + slots[i]` of the float32 table
// `weight` becomes ids[i]'s initial row (the values of slot_init_rows), and the same row of
// each optimizer-state tensor states[k] becomes fresh[k] (one row of a fresh table's state,
// of that tensor's dtype), replacing the Python glue of an index_put per state tensor.
// With `values` ([n, dim] float32: slot_init_rows(ids), computed ahead, e.g. by the prefetch
// thread) the rows are copied from it instead of computed.
// The weight and state rows are prefetched kAhead rows ahead.  Every argument is checked
// before anything is written.
void slot_fresh_rows_cpu(const at::Tensor& weight, int64_t offset, const at::Tensor& slots_in,
                         const at::Tensor& ids_in, int64_t seed, double std_dev,
                         at::TensorList states, at::TensorList fresh,
                         const std::optional<at::Tensor>& values_in) {
  constexpr const char* api = "slot_fresh_rows";
  TORCH_CHECK(weight.device().is_cpu() && weight.scalar_type() == at::kFloat && weight.dim() == 2 &&
                  weight.is_contiguous(),
              api, ": weight must be a contiguous 2-D float32 CPU tensor");
  TORCH_CHECK(ids_in.scalar_type() == at::kLong && slots_in.scalar_type() == at::kLong &&
                  ids_in.numel() == slots_in.numel(),
              api, ": ids and slots must be int64 tensors of one length, got ", ids_in.numel(),
              " and ", slots_in.numel());
  TORCH_CHECK(states.size() == fresh.size(), api, ": ", states.size(), " state tensors but ",
              fresh.size(), " fresh rows");
  const int64_t rows = weight.size(0), dim = weight.size(1);
  const size_t k_states = states.size();
  std::vector<char*> state_ptr(k_states);
  std::vector<const char*> fresh_ptr(k_states);
  std::vector<int64_t> row_bytes(k_states);
  for (size_t k = 0; k < k_states; ++k) {
    const at::Tensor& s = states[k];
    const at::Tensor& f = fresh[k];
    TORCH_CHECK(s.device().is_cpu() && s.is_contiguous() && s.dim() >= 1 && s.size(0) == rows, api,
                ": state tensor ", k, " must be a contiguous CPU tensor of ", rows, " rows");
    TORCH_CHECK(f.device().is_cpu() && f.is_contiguous() && f.scalar_type() == s.scalar_type() &&
                    f.numel() * rows == s.numel(),
                api, ": fresh row ", k, " must be one contiguous row of state tensor ", k,
                " (dtype ", s.scalar_type(), ", ", s.numel() / std::max<int64_t>(rows, 1),
                " entries)");
    state_ptr[k] = static_cast<char*>(s.data_ptr());
    fresh_ptr[k] = static_cast<const char*>(f.data_ptr());
    row_bytes[k] = f.numel() * static_cast<int64_t>(f.element_size());
  }
  const at::Tensor ids_t = ids_in.contiguous(), slots_t = slots_in.contiguous();
  const int64_t n = ids_t.numel();
  const float* values = nullptr;
  if (values_in.has_value() && values_in->defined()) {
    const at::Tensor& v = *values_in;
    TORCH_CHECK(v.device().is_cpu() && v.scalar_type() == at::kFloat && v.is_contiguous() &&
                    v.dim() == 2 && v.size(0) == n && v.size(1) == dim,
                api, ": values must be a contiguous float32 [", n, ", ", dim, "] CPU tensor");
    values = v.data_ptr<float>();
  }
  const int64_t* ids = ids_t.data_ptr<int64_t>();
  const int64_t* slots = slots_t.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    const int64_t r = offset + slots[i];
    TORCH_CHECK(r >= 0 && r < rows, api, ": row ", r, " (offset ", offset, " + slot ", slots[i],
                ") outside ", rows, " rows");
  }
  float* w = weight.data_ptr<float>();
  const uint64_t salt = mix(static_cast<uint64_t>(seed));
  constexpr int64_t kLine = 64 / sizeof(float);
  for (int64_t i = 0; i < n; ++i) {
    if (i + kAhead < n) {
      const int64_t ahead = offset + slots[i + kAhead];
      const float* wa = w + ahead * dim;
      for (int64_t c = 0; c < dim; c += kLine) __builtin_prefetch(wa + c, 1, 1);
      for (size_t k = 0; k < k_states; ++k) {
        __builtin_prefetch(state_ptr[k] + ahead * row_bytes[k], 1, 1);
      }
    }
    const int64_t r = offset + slots[i];
    if (values != nullptr) {
      std::memcpy(w + r * dim, values + i * dim, static_cast<size_t>(dim) * sizeof(float));
    } else {
      init_row(w + r * dim, ids[i], salt, dim, std_dev);
    }
    for (size_t k = 0; k < k_states; ++k) {
      std::memcpy(state_ptr[k] + r * row_bytes[k], fresh_ptr[k], static_cast<size_t>(row_bytes[k]));
    }
  }
}

}  // namespace
}  // namespace embtable

TORCH_LIBRARY_FRAGMENT(embtable, m) {
  m.def(
      "slot_lookup(Tensor ids, Tensor(a!)[] state, int[] config) -> "
      "(Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("slot_find(Tensor ids, Tensor index) -> Tensor");
  m.def("slot_table_build(Tensor keys, Tensor values, int size) -> Tensor");
  m.def("slot_init_rows(Tensor ids, int dim, int seed, float std) -> Tensor");
  m.def("slot_init_rows_into(Tensor(a!) weight, Tensor slots, Tensor ids, int seed, float std) -> ()");
  m.def(
      "slot_fresh_rows(Tensor(a!) weight, int offset, Tensor slots, Tensor ids, int seed, "
      "float std, Tensor(b!)[] states, Tensor[] fresh, Tensor? values=None) -> ()");
}

TORCH_LIBRARY_IMPL(embtable, CPU, m) {
  m.impl("slot_lookup", &embtable::slot_lookup_cpu);
  m.impl("slot_find", &embtable::slot_find_cpu);
  m.impl("slot_table_build", &embtable::slot_table_build_cpu);
  m.impl("slot_init_rows", &embtable::slot_init_rows_cpu);
  m.impl("slot_init_rows_into", &embtable::slot_init_rows_into_cpu);
  m.impl("slot_fresh_rows", &embtable::slot_fresh_rows_cpu);
}

//! An engine's live counters, and the snapshot of them callers read.

use std::sync::atomic::{AtomicU64, AtomicUsize};

use serde::Serialize;

/// Live counters of one engine, shared with its decode loop.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(super) queued: AtomicUsize,
    pub(super) active: AtomicUsize,
    pub(super) requests: AtomicU64,
    pub(super) tokens: AtomicU64,
    pub(super) cancelled: AtomicU64,
    pub(super) steps: AtomicU64,
    pub(super) kv_blocks_used: AtomicUsize,
    pub(super) kv_blocks_cached: AtomicUsize,
    pub(super) prefix_cache_queries: AtomicU64,
    pub(super) prefix_cache_hits: AtomicU64,
    pub(super) preemptions: AtomicU64,
}

/// A snapshot of an engine's load and work so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EngineStats {
    /// Requests waiting for a free slot or for room in the KV-cache budget.
    pub queued: usize,
    /// Requests being generated.
    pub active: usize,
    /// Requests accepted since the model was loaded.
    pub requests: u64,
    /// Tokens sampled since the model was loaded.
    pub tokens: u64,
    /// Requests that ended because their caller went away or cancelled.
    pub cancelled: u64,
    /// Bytes of the KV blocks sequences hold (in use, not merely cached).
    pub kv_cache_bytes: usize,
    /// Bytes of the whole block pool (`--kv-cache-memory`).
    pub kv_cache_budget: usize,
    /// Blocks in the pool, of `kv_block_size` positions each.
    pub kv_blocks_total: usize,
    /// Blocks running sequences hold.
    pub kv_blocks_used: usize,
    /// Free blocks that still hold a cached prompt prefix (evicted least recently used first).
    pub kv_blocks_cached: usize,
    /// Positions per block (`--kv-block-size`).
    pub kv_block_size: usize,
    /// Prompt tokens looked up in the prefix cache, and those found there.
    pub prefix_cache_queries: u64,
    pub prefix_cache_hits: u64,
    /// Sequences preempted (their blocks freed, recomputed later) because the pool ran out.
    pub preemptions: u64,
    /// Forward passes run; each advances every running sequence.
    pub steps: u64,
}

//! The one owner of KV blocks: admission, growth, prefix sharing, release.

use std::hash::{Hash, Hasher};

use super::pool::{BlockKey, BlockPool};
use super::{BlockId, KvShape};

/// The blocks one sequence's positions live in, in order.
#[derive(Debug, Default)]
pub(crate) struct BlockTable {
    blocks: Vec<BlockId>,
    /// The hash chain of the prompt's full blocks (empty without prefix caching).
    prompt_hashes: Vec<u64>,
    /// Leading prompt blocks already findable in the cache.
    registered: usize,
}

impl BlockTable {
    pub fn blocks(&self) -> &[BlockId] {
        &self.blocks
    }
}

/// A prompt's admission: its table, with the blocks of the longest cached prefix shared.
#[derive(Debug)]
pub(crate) struct Admission {
    pub table: BlockTable,
    /// Leading prompt positions whose keys and values are already in the table.
    pub cached: usize,
}

/// The pool's state, for stats and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct KvUsage {
    pub total: usize,
    /// Held by sequences.
    pub used: usize,
    /// Free, still holding a cached prefix.
    pub cached: usize,
    /// Prompt tokens looked up in the prefix cache, and those found.
    pub queries: u64,
    pub hits: u64,
}

pub(crate) struct KvManager {
    shape: KvShape,
    pool: BlockPool,
    prefix_caching: bool,
    queries: u64,
    hits: u64,
}

impl KvManager {
    pub fn new(shape: KvShape, blocks: usize, prefix_caching: bool) -> Self {
        Self {
            shape,
            pool: BlockPool::new(blocks),
            prefix_caching,
            queries: 0,
            hits: 0,
        }
    }

    pub fn usage(&self) -> KvUsage {
        KvUsage {
            total: self.pool.total(),
            used: self.pool.total() - self.pool.free(),
            cached: self.pool.cached(),
            queries: self.queries,
            hits: self.hits,
        }
    }

    /// A table for `prompt` with room for one position more, sharing the longest cached prefix
    /// (never the block of the prompt's last token, which is always computed) unless
    /// `share_prefix` is false (the whole prompt must be computed: its logits are wanted);
    /// `None` while the free blocks are too few to leave `reserve` of them free.
    pub fn admit(
        &mut self,
        prompt: &[u32],
        reserve: usize,
        share_prefix: bool,
    ) -> Option<Admission> {
        let bs = self.shape.block_size;
        let prompt_hashes = match self.prefix_caching && share_prefix {
            true => chain(prompt, bs),
            false => Vec::new(),
        };
        let usable = prompt_hashes.len().min((prompt.len() - 1) / bs);
        let hit: Vec<BlockId> = (0..usable)
            .map_while(|i| self.pool.find(&key(prompt, &prompt_hashes, bs, i)))
            .collect();
        let needed = self.shape.blocks_for(prompt.len() + 1) - hit.len();
        let reclaimed = hit.iter().filter(|&&id| self.pool.is_free(id)).count();
        if needed + reserve > self.pool.free() - reclaimed {
            return None;
        }
        for &id in &hit {
            self.pool.share(id);
        }
        let mut table = BlockTable {
            registered: hit.len(),
            blocks: hit,
            prompt_hashes,
        };
        for _ in 0..needed {
            // Counted free above.
            let id = self.pool.allocate()?;
            table.blocks.push(id);
        }
        let cached = table.registered * bs;
        if self.prefix_caching && share_prefix {
            self.queries += prompt.len() as u64;
            self.hits += cached as u64;
        }
        Some(Admission { table, cached })
    }

    /// Blocks that can be handed out (cached ones included).
    pub fn free_blocks(&self) -> usize {
        self.pool.free()
    }

    /// Blocks `table` must be given to hold `positions`.
    pub fn growth(&self, table: &BlockTable, positions: usize) -> usize {
        self.shape
            .blocks_for(positions)
            .saturating_sub(table.blocks.len())
    }

    /// Blocks freeing `table` would free: those no other sequence shares.
    pub fn releases(&self, table: &BlockTable) -> usize {
        table
            .blocks
            .iter()
            .filter(|&&id| self.pool.refs(id) == 1)
            .count()
    }

    /// Grows `table` to hold `positions`; false (and unchanged) when the pool has too few free
    /// blocks.
    pub fn grow(&mut self, table: &mut BlockTable, positions: usize) -> bool {
        let needed = self.growth(table, positions);
        if needed > self.pool.free() {
            return false;
        }
        for _ in 0..needed {
            match self.pool.allocate() {
                Some(id) => table.blocks.push(id),
                None => return false,
            }
        }
        true
    }

    /// Makes the full blocks of `prompt` within its first `computed` positions findable by
    /// later prompts. Only positions computed as prompt chunks are cached: on dense weights and
    /// on matrices only candle's generic kernel takes, a generated token's keys come from other
    /// kernels than a prompt chunk's, and a prompt that found them in the cache would continue
    /// differently than one computed cold.
    pub fn cache_prompt(&mut self, table: &mut BlockTable, prompt: &[u32], computed: usize) {
        let full =
            (computed.min(prompt.len()) / self.shape.block_size).min(table.prompt_hashes.len());
        if full <= table.registered {
            return;
        }
        for i in table.registered..full {
            let key = key(prompt, &table.prompt_hashes, self.shape.block_size, i);
            self.pool.register(table.blocks[i], key);
        }
        table.registered = full;
    }

    /// Gives back a finished or preempted sequence's blocks, its last ones first, so that the
    /// cached prefix blocks other prompts are most likely to share are evicted last.
    pub fn free(&mut self, table: BlockTable) {
        for &id in table.blocks.iter().rev() {
            self.pool.release(id);
        }
    }
}

/// The hashes of `tokens`' full blocks, each hashing the one before it with the block's tokens,
/// so equal tokens after a different prefix never match. Computed once per prompt, at admission.
fn chain(tokens: &[u32], block_size: usize) -> Vec<u64> {
    tokens
        .chunks_exact(block_size)
        .scan(0u64, |parent, block| {
            let mut hasher = std::hash::DefaultHasher::new();
            (*parent, block).hash(&mut hasher);
            *parent = hasher.finish();
            Some(*parent)
        })
        .collect()
}

/// The key of full block `i` of `tokens`, whose hash chain is `hashes`.
fn key(tokens: &[u32], hashes: &[u64], block_size: usize, i: usize) -> BlockKey {
    BlockKey {
        hash: hashes[i],
        parent: i.checked_sub(1).map_or(0, |p| hashes[p]),
        tokens: tokens[i * block_size..(i + 1) * block_size].into(),
    }
}

#[cfg(test)]
mod tests {
    use candle_core::DType;

    use super::*;

    fn manager(blocks: usize) -> KvManager {
        let shape = KvShape {
            layers: 2,
            kv_heads: 1,
            head_dim: 4,
            block_size: 4,
            dtype: DType::F32,
        };
        KvManager::new(shape, blocks, true)
    }

    fn tokens(range: std::ops::Range<u32>) -> Vec<u32> {
        range.collect()
    }

    #[test]
    fn admits_grows_and_frees() {
        let mut kv = manager(4);
        // 6 tokens plus one: 2 blocks.
        let a = kv.admit(&tokens(0..6), 0, true).unwrap();
        assert_eq!((a.table.blocks.len(), a.cached), (2, 0));
        let mut table = a.table;
        assert!(kv.grow(&mut table, 9));
        assert_eq!(table.blocks.len(), 3);
        assert_eq!(kv.usage().used, 3);
        // 2 more blocks do not fit in the 1 left.
        assert!(kv.admit(&tokens(100..105), 0, true).is_none());
        assert!(!kv.grow(&mut table, 17));
        assert_eq!(table.blocks.len(), 3, "a failed grow changes nothing");
        kv.free(table);
        assert_eq!(kv.usage().used, 0);
        assert!(kv.admit(&tokens(100..105), 0, true).is_some());
    }

    #[test]
    fn shares_cached_prompt_blocks_with_reference_counts() {
        let mut kv = manager(8);
        let prompt = tokens(0..10);
        let mut first = kv.admit(&prompt, 0, true).unwrap().table;
        kv.cache_prompt(&mut first, &prompt, 10);
        // Same 8 leading tokens: two full blocks shared.
        let mut other = tokens(0..8);
        other.extend([77, 78, 79]);
        let second = kv.admit(&other, 0, true).unwrap();
        assert_eq!(second.cached, 8);
        assert_eq!(second.table.blocks[..2], first.blocks[..2]);
        assert_eq!(kv.pool.refs(first.blocks[0]), 2);
        kv.free(first);
        assert_eq!(kv.pool.refs(second.table.blocks[0]), 1);
        kv.free(second.table);
        let usage = kv.usage();
        assert_eq!((usage.used, usage.cached), (0, 2));
        assert_eq!((usage.queries, usage.hits), (21, 8));
    }

    #[test]
    fn a_fully_cached_prompt_still_computes_its_last_block() {
        let mut kv = manager(8);
        let prompt = tokens(0..8);
        let mut first = kv.admit(&prompt, 0, true).unwrap().table;
        kv.cache_prompt(&mut first, &prompt, 8);
        kv.free(first);
        let again = kv.admit(&prompt, 0, true).unwrap();
        assert_eq!(
            again.cached, 4,
            "the block of the last token is computed again"
        );
    }

    #[test]
    fn a_prompt_that_must_be_computed_whole_shares_nothing() {
        let mut kv = manager(8);
        let prompt = tokens(0..9);
        let mut first = kv.admit(&prompt, 0, true).unwrap().table;
        kv.cache_prompt(&mut first, &prompt, 9);
        kv.free(first);
        let queried = kv.usage().queries;
        let whole = kv.admit(&prompt, 0, false).unwrap();
        assert_eq!(whole.cached, 0);
        assert_eq!(kv.usage().queries, queried, "no lookup, none counted");
        kv.free(whole.table);
        assert_eq!(kv.admit(&prompt, 0, true).unwrap().cached, 8);
    }

    #[test]
    fn the_same_tokens_after_a_different_prefix_never_match() {
        let mut kv = manager(8);
        let prompt = tokens(0..9);
        let mut first = kv.admit(&prompt, 0, true).unwrap().table;
        kv.cache_prompt(&mut first, &prompt, 9);
        kv.free(first);
        // Block 2 (tokens 4..8) the same, block 1 not.
        let mut other = vec![9, 9, 9, 9];
        other.extend(4..9);
        assert_eq!(kv.admit(&other, 0, true).unwrap().cached, 0);
    }

    #[test]
    fn only_computed_prompt_blocks_are_cached() {
        let mut kv = manager(8);
        let prompt = tokens(0..12);
        let mut table = kv.admit(&prompt, 0, true).unwrap().table;
        kv.cache_prompt(&mut table, &prompt, 5);
        kv.free(table);
        assert_eq!(kv.admit(&prompt, 0, true).unwrap().cached, 4);
    }

    #[test]
    fn evicts_the_least_recently_freed_cached_blocks_first() {
        let mut kv = manager(4);
        let (a, b) = (tokens(0..5), tokens(10..15));
        for prompt in [&a, &b] {
            let mut table = kv.admit(prompt, 0, true).unwrap().table;
            kv.cache_prompt(&mut table, prompt, 5);
            kv.free(table);
        }
        assert_eq!(kv.usage().cached, 2);
        // Needs 3 of the 4: the 2 empty ones, then `a`'s cached block (freed first).
        let c = kv.admit(&tokens(20..31), 0, true).unwrap().table;
        assert_eq!(kv.usage().cached, 1);
        kv.free(c);
        assert_eq!(
            kv.admit(&b, 0, true).unwrap().cached,
            4,
            "b's block survives"
        );
        assert_eq!(kv.admit(&a, 0, true).unwrap().cached, 0, "a's was evicted");
    }

    #[test]
    fn sharing_a_free_cached_block_takes_it_from_the_free_count() {
        let mut kv = manager(3);
        let prompt = tokens(0..5);
        let mut table = kv.admit(&prompt, 0, true).unwrap().table;
        kv.cache_prompt(&mut table, &prompt, 5);
        kv.free(table);
        // 3 free (one cached). 9 tokens + 1 need 3 blocks, one of them the cached one: fits.
        let mut long = tokens(0..4);
        long.extend(50..55);
        let admitted = kv.admit(&long, 0, true).unwrap();
        assert_eq!((admitted.cached, admitted.table.blocks.len()), (4, 3));
        assert_eq!(kv.usage().used, 3);
    }
}

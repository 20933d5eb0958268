//! The blocks themselves: who holds each one, and which free ones still hold a cached prompt
//! prefix.

use std::collections::{BTreeMap, HashMap};

use super::BlockId;

/// What a cached block holds: its tokens after the prefix whose hash is `parent`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct BlockKey {
    pub hash: u64,
    pub parent: u64,
    pub tokens: Box<[u32]>,
}

#[derive(Debug, Default)]
struct Block {
    /// Sequences holding it; 0 when free.
    refs: u32,
    /// Set once its positions are computed from a prompt, while it may be shared.
    key: Option<BlockKey>,
    /// Its place in `cached` while free with a key.
    freed_at: u64,
}

/// Fixed-size blocks, reference-counted. A free block with a key stays findable by its hash until
/// it is handed out again; free blocks without one go first, then cached ones, least recently
/// freed first.
#[derive(Debug)]
pub(super) struct BlockPool {
    blocks: Vec<Block>,
    /// Free blocks that hold nothing worth keeping.
    empty: Vec<BlockId>,
    /// Free blocks with a key, by when they were freed (oldest first).
    cached: BTreeMap<u64, BlockId>,
    /// Every block with a key, free or held.
    by_hash: HashMap<u64, BlockId>,
    clock: u64,
}

impl BlockPool {
    pub fn new(blocks: usize) -> Self {
        Self {
            blocks: (0..blocks).map(|_| Block::default()).collect(),
            // Popped from the end: block 0 first.
            empty: (0..blocks as BlockId).rev().collect(),
            cached: BTreeMap::new(),
            by_hash: HashMap::new(),
            clock: 0,
        }
    }

    pub fn total(&self) -> usize {
        self.blocks.len()
    }

    /// Blocks that can be handed out (cached ones included).
    pub fn free(&self) -> usize {
        self.empty.len() + self.cached.len()
    }

    /// Free blocks that still hold a cached prefix.
    pub fn cached(&self) -> usize {
        self.cached.len()
    }

    /// Whether `id` is free (so sharing it takes one from [`BlockPool::free`]).
    pub fn is_free(&self, id: BlockId) -> bool {
        self.blocks[id as usize].refs == 0
    }

    /// A free block for one holder, evicting the least recently freed cached one if no empty one
    /// is left.
    pub fn allocate(&mut self) -> Option<BlockId> {
        let id = match self.empty.pop() {
            Some(id) => id,
            None => {
                let (_, id) = self.cached.pop_first()?;
                if let Some(key) = self.blocks[id as usize].key.take() {
                    self.by_hash.remove(&key.hash);
                }
                id
            }
        };
        self.blocks[id as usize].refs = 1;
        Some(id)
    }

    /// The block holding `key`'s tokens after `key.parent`, if one does.
    pub fn find(&self, key: &BlockKey) -> Option<BlockId> {
        let id = *self.by_hash.get(&key.hash)?;
        (self.blocks[id as usize].key.as_ref() == Some(key)).then_some(id)
    }

    /// One more holder of `id`.
    pub fn share(&mut self, id: BlockId) {
        let block = &mut self.blocks[id as usize];
        if block.refs == 0 {
            self.cached.remove(&block.freed_at);
        }
        block.refs += 1;
    }

    /// One holder fewer; the last one frees it (kept findable if it has a key).
    pub fn release(&mut self, id: BlockId) {
        let block = &mut self.blocks[id as usize];
        block.refs = block.refs.saturating_sub(1);
        if block.refs > 0 {
            return;
        }
        match block.key {
            Some(_) => {
                self.clock += 1;
                block.freed_at = self.clock;
                self.cached.insert(self.clock, id);
            }
            None => self.empty.push(id),
        }
    }

    /// Makes held block `id` findable by `key`, unless another block already holds those tokens.
    pub fn register(&mut self, id: BlockId, key: BlockKey) {
        if self.by_hash.contains_key(&key.hash) || self.blocks[id as usize].key.is_some() {
            return;
        }
        self.by_hash.insert(key.hash, id);
        self.blocks[id as usize].key = Some(key);
    }

    /// Holders of `id`.
    pub fn refs(&self, id: BlockId) -> u32 {
        self.blocks[id as usize].refs
    }
}

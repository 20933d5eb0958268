//! KV memory: one pool of fixed-size blocks per loaded model, and the one owner that hands them
//! out.
//!
//! The [`KvStore`] holds every block's keys and values, per layer. Each sequence holds a
//! [`BlockTable`], the blocks its positions live in, in order. The [`KvManager`] is the only code
//! that allocates, grows, shares and frees blocks: admission asks it for the blocks of a prompt
//! (sharing the longest prefix another prompt already computed), each step grows the tables of
//! the sequences that advance, and a finished or preempted sequence gives its blocks back, the
//! full prompt blocks staying cached until the pool needs them, least recently used first.

mod manager;
mod pool;
mod shape;
mod store;

pub(crate) use manager::{Admission, BlockTable, KvManager};
pub(crate) use shape::KvShape;
pub(crate) use store::{KvStore, pool_row};

/// A block's index in the pool.
pub(crate) type BlockId = u32;

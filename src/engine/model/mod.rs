//! The model: one transformer for every family and weight format, and what it is built from.

mod attention;
pub(crate) mod config;
mod kv;
mod linear;
pub(crate) mod q8_0;
mod rope;
mod transformer;
pub(crate) mod weights;

pub(crate) use config::{Config, Family};
pub(crate) use kv::KvCache;
pub(crate) use linear::Linear;
pub(crate) use transformer::{Segment, Transformer};
pub(crate) use weights::{WeightSource, hf_name};

#[cfg(test)]
mod tests;

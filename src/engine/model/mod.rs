//! The model: one transformer for every family and weight format, and what it is built from.

pub(crate) mod attention;
pub(crate) mod config;
mod embedding;
pub(crate) mod kernels;
mod linear;
mod rope;
mod transformer;
pub(crate) mod weights;

pub(crate) use config::{Config, Family};
pub(crate) use embedding::Embedding;
pub(crate) use linear::Linear;
pub(crate) use transformer::{Logits, Segment, Transformer};
pub(crate) use weights::{WeightSource, hf_name};

#[cfg(test)]
mod tests;

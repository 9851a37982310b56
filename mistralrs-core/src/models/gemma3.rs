//! Gemma 3 (text): the Gemma 2 decoder (gemma2.rs) with an RMSNorm over each
//! query and key head before rotation, five local layers to one global one
//! (the pattern from the config), local layers rotating with their own base
//! (`rope_local_base_freq`) and without the global layers' `rope_scaling`,
//! and no soft-capping. A multimodal checkpoint's text decoder loads here;
//! its vision tower is not read.

use candle_core::Device;

use super::decoder::PreNormDecoder;
use crate::config::ModelConfig;
use crate::error::Result;
use crate::layers::GatedMlp;
use crate::weights::WeightSource;

pub fn load(cfg: &ModelConfig, w: &dyn WeightSource, device: &Device, progress: &dyn Fn(usize)) -> Result<PreNormDecoder<GatedMlp>> {
    super::gemma2::load_decoder(cfg, w, device, progress, true)
}

//! The checks a config passes before anything is sized by it.

use super::field::Field;
use super::model::{ModelConfig, RopeScaling};

/// No real model comes near this in any one dimension (the largest vocabularies
/// are ~256k, hidden sizes ~32k); a file that claims more is corrupt, and the
/// bound keeps products of dims far from overflow.
const MAX_DIM: usize = 1 << 24;
/// Experts per layer.
const MAX_EXPERTS: usize = 1 << 12;

impl ModelConfig {
    /// Checks every size and hyper-parameter for range and consistency
    /// before anything is allocated by it. `tensors` is how many tensors the
    /// weights hold (each layer has several, so it bounds the layer count);
    /// `name` says how the file names a field.
    pub fn validate(&self, tensors: usize, name: &dyn Fn(Field) -> String) -> std::result::Result<(), String> {
        let dim = |f: Field, v: usize| -> std::result::Result<(), String> {
            if v == 0 || v > MAX_DIM {
                return Err(format!("`{}` is {v}; it must be between 1 and {MAX_DIM}", name(f)));
            }
            Ok(())
        };
        dim(Field::Vocab, self.vocab_size)?;
        dim(Field::Hidden, self.hidden_size)?;
        dim(Field::Intermediate, self.intermediate_size)?;
        dim(Field::Heads, self.num_heads)?;
        dim(Field::KvHeads, self.num_kv_heads)?;
        dim(Field::HeadDim, self.head_dim)?;
        if self.num_layers == 0 || self.num_layers > tensors {
            return Err(format!(
                "`{}` is {}, but the weights hold {tensors} tensors (each layer has several)",
                name(Field::Layers),
                self.num_layers
            ));
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(format!(
                "`{}` ({}) is not a multiple of `{}` ({})",
                name(Field::Heads),
                self.num_heads,
                name(Field::KvHeads),
                self.num_kv_heads
            ));
        }
        if self.num_heads.saturating_mul(self.head_dim) > MAX_DIM {
            return Err(format!("`{}` × head dim is beyond {MAX_DIM}", name(Field::Heads)));
        }
        if self.rotary_dim == 0 || self.rotary_dim % 2 != 0 || self.rotary_dim > self.head_dim {
            return Err(format!(
                "`{}` gives a rotary dimension of {}; it must be even, positive and at most the head dim {}",
                name(Field::RotaryDim),
                self.rotary_dim,
                self.head_dim
            ));
        }
        if self.max_position_embeddings == 0 {
            return Err(format!("`{}` is 0", name(Field::Context)));
        }
        if self.sliding_window == Some(0) {
            return Err(format!("`{}` is 0", name(Field::SlidingWindow)));
        }
        if !self.norm_eps.is_finite() || self.norm_eps < 0.0 {
            return Err(format!("`{}` is {}; it must be finite and not negative", name(Field::NormEps), self.norm_eps));
        }
        if !self.rope_theta.is_finite() || self.rope_theta <= 0.0 {
            return Err(format!("`{}` is {}; it must be finite and positive", name(Field::RopeTheta), self.rope_theta));
        }
        if self.num_experts > MAX_EXPERTS
            || (self.num_experts > 0 && !(1..=self.num_experts).contains(&self.experts_per_token))
        {
            return Err(format!(
                "`{}` is {} with `{}` {}; experts per token must be between 1 and the experts (at most {MAX_EXPERTS})",
                name(Field::Experts),
                self.num_experts,
                name(Field::ExpertsPerToken),
                self.experts_per_token
            ));
        }
        self.validate_extras(name)?;
        self.validate_rope_scaling(name)
    }

    fn validate_extras(&self, name: &dyn Fn(Field) -> String) -> std::result::Result<(), String> {
        let e = &self.extras;
        for (field, v) in [
            (Field::QueryPreAttnScalar, e.query_pre_attn_scalar),
            (Field::AttnSoftcap, e.attn_logit_softcap),
            (Field::FinalSoftcap, e.final_logit_softcap),
            (Field::LocalRopeTheta, e.local_rope_theta),
        ] {
            if let Some(x) = v.filter(|x| !(x.is_finite() && *x > 0.0)) {
                return Err(format!("`{}` is {x}; it must be finite and positive", name(field)));
            }
        }
        if let Some(layers) = &e.sliding_layers {
            if layers.len() != self.num_layers {
                return Err(format!("{} layer kinds for `{}` = {} layers", layers.len(), name(Field::Layers), self.num_layers));
            }
        }
        Ok(())
    }

    fn validate_rope_scaling(&self, name: &dyn Fn(Field) -> String) -> std::result::Result<(), String> {
        let positive = |x: f64| x.is_finite() && x > 0.0;
        let pairs = self.rotary_dim / 2;
        let factors = |v: &[f32]| v.len() == pairs && v.iter().all(|&x| positive(x as f64));
        let ok = match &self.rope_scaling {
            RopeScaling::None => true,
            RopeScaling::Linear { factor } => positive(*factor),
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position } => {
                [*factor, *low_freq_factor, *high_freq_factor, *original_max_position].into_iter().all(positive)
                    && high_freq_factor != low_freq_factor
            }
            RopeScaling::Factors(v) => factors(v),
            RopeScaling::LongRope { short, long, original_max_position, attention_factor } => {
                factors(short) && factors(long) && *original_max_position > 0 && positive(*attention_factor)
            }
        };
        if ok {
            return Ok(());
        }
        Err(format!(
            "`{}`: the rope scaling {:?} needs finite, positive factors ({pairs} per-pair factors where it has a list)",
            name(Field::RopeScaling),
            self.rope_scaling
        ))
    }
}

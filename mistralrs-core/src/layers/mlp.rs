//! Feed-forward blocks: gated (SwiGLU, GeGLU; gate and up stored apart or
//! fused) and plain two-layer (phi2).

use candle_core::{Result, Tensor};

use crate::kernels::activation::{self, GateAct};

use super::linear::Linear;
use super::step::StepContext;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Activation {
    Silu,
    /// GELU with the tanh approximation (`gelu_new`, `gelu_pytorch_tanh`).
    GeluTanh,
    /// Exact GELU (`gelu`).
    Gelu,
}

impl Activation {
    /// transformers' `hidden_act` names.
    pub fn from_hf(name: &str) -> Option<Self> {
        Some(match name {
            "silu" | "swish" => Self::Silu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Self::GeluTanh,
            "gelu" => Self::Gelu,
            _ => return None,
        })
    }

    pub fn apply(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Silu => candle_nn::ops::silu(x),
            Self::GeluTanh => x.gelu(),
            Self::Gelu => x.gelu_erf(),
        }
    }

    /// `act(gate) · up`: one fused pass where the CPU kernel takes it.
    pub fn gated(self, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
        let kernel = match self {
            Self::Silu => Some(GateAct::Silu),
            Self::GeluTanh => Some(GateAct::GeluTanh),
            Self::Gelu => None,
        };
        if let Some(k) = kernel {
            if let Some(y) = activation::gated_product(k, gate, up)? {
                return Ok(y);
            }
        }
        self.apply(gate)? * up
    }
}

pub enum GateUp {
    Separate { gate: Linear, up: Linear },
    /// One matrix whose output is the gate then the up projection (phi3).
    Fused(Linear),
}

/// `down(act(gate(x)) * up(x))`
pub struct GatedMlp {
    gate_up: GateUp,
    down: Linear,
    act: Activation,
}

impl GatedMlp {
    pub fn new(gate_up: GateUp, down: Linear, act: Activation) -> Self {
        Self { gate_up, down, act }
    }

    /// `x`: (tokens, hidden). With `ctx`, the rows are the step's token
    /// rows and carry their adapters; without (a mixture-of-experts expert
    /// over the rows routed to it), no adapters apply.
    pub fn forward(&self, x: &Tensor, ctx: Option<&StepContext>) -> Result<Tensor> {
        let lin = |l: &Linear, x: &Tensor| match ctx {
            Some(ctx) => l.forward_rows(x, ctx),
            None => l.forward(x),
        };
        let (gate, up) = match &self.gate_up {
            GateUp::Separate { gate, up } => (lin(gate, x)?, lin(up, x)?),
            GateUp::Fused(gu) => {
                let y = lin(gu, x)?;
                let half = y.dims2()?.1 / 2;
                (y.narrow(1, 0, half)?, y.narrow(1, half, half)?)
            }
        };
        lin(&self.down, &self.act.gated(&gate, &up)?)
    }
}

/// `fc2(act(fc1(x)))`
pub struct Mlp {
    fc1: Linear,
    fc2: Linear,
    act: Activation,
}

impl Mlp {
    pub fn new(fc1: Linear, fc2: Linear, act: Activation) -> Self {
        Self { fc1, fc2, act }
    }

    /// `x`: the step's token rows (tokens, hidden).
    pub fn forward(&self, x: &Tensor, ctx: &StepContext) -> Result<Tensor> {
        self.fc2.forward_rows(&self.act.apply(&self.fc1.forward_rows(x, ctx)?)?, ctx)
    }
}

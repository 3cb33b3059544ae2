//! DPO training: preference losses, the optimiser, the trainable policy (all parameters, the
//! top k layers with the frozen rest cached, or LoRA adapters, read and written in PEFT's
//! format) and the training loop.

pub mod loss;
pub mod optim;
pub mod peft;
pub mod policy;
pub mod trainer;

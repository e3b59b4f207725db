//! The networks a query runs through: dense linear algebra, the backbones (history → user
//! vector), the prompt encoder and intent head (text → prompt input), and the steering head.

pub mod backbone;
pub mod bert;
pub mod encoder;
pub mod intent;
pub mod linalg;
pub mod packed;
pub mod steer;
pub mod tensors;

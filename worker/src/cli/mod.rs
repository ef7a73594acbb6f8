pub mod bench;
pub mod progress;
pub mod render;
pub mod weights;

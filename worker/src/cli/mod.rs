pub mod bench;
pub mod jobs;
pub mod progress;
pub mod render;
pub mod weights;
pub mod worker;

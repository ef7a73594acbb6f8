pub mod bench;
pub mod bench_cluster;
pub mod jobs;
pub mod progress;
pub mod render;
pub mod weights;
pub mod worker;

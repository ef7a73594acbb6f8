//! What a worker uploads is checked for what it is, not only for its checksums: a chunk must
//! be the segment's frames in the job's container and codec parameters, a state must be one
//! the next worker's loader takes, of this job's render, and neither may be larger than a
//! segment of the job can be.

use crate::farm::{mp4_chunk, state_bytes, Cluster, FakeWorker, FAKE_WEIGHTS};
use proto::v1;
use std::path::Path;
use tonic::Code;

/// A 64x48 grey chunk of `frames` frames made by the `ffmpeg` command with `args` (the
/// encoder's profile, the container) into `name`.
fn ffmpeg_chunk(dir: &Path, frames: u32, args: &[&str], name: &str) -> Vec<u8> {
    let out = dir.join(name);
    let n = frames.to_string();
    let mut command = std::process::Command::new("ffmpeg");
    command.args(["-v", "error", "-y", "-f", "lavfi", "-i", "color=c=gray:s=64x48:r=30", "-frames:v", &n]);
    command.args(["-c:v", "libx264", "-pix_fmt", "yuv420p"]).args(args).arg(&out);
    let status = command.status().expect("ffmpeg runs");
    assert!(status.success(), "ffmpeg {args:?}");
    std::fs::read(&out).unwrap()
}

#[test]
fn uploads_declaring_more_than_a_segment_can_hold_are_refused_before_their_bytes() {
    let c = Cluster::start("30", &[]);
    let id = c.submit(&["--size", "64x48", "--frames", "4", "--segment-frames", "2"]);
    let mut w = FakeWorker::register(&c);
    let a = w.acquire(&c);
    let chunk = mp4_chunk(c.dir.path(), 2);
    let state = state_bytes(&c.fingerprint(&id, FAKE_WEIGHTS), 2, (64, 48));
    let honest = v1::CompleteHeader {
        attempt_id: a.attempt_id,
        chunk_size: chunk.len() as u64,
        chunk_sha256: coordinator::sha256_hex(&chunk),
        state_size: state.len() as u64,
        state_sha256: coordinator::sha256_hex(&state),
        ..Default::default()
    };
    // A 64x48 segment of two frames: a terabyte of chunk or state cannot be right, and once
    // filled the coordinator's disk before any check ran.
    let cases = [
        (
            "chunk_size",
            v1::CompleteHeader { chunk_size: 1 << 40, ..honest.clone() },
            "chunk_size: 1099511627776 bytes declared, at most",
        ),
        (
            "state_size",
            v1::CompleteHeader { state_size: 1 << 40, ..honest.clone() },
            "state_size: 1099511627776 bytes declared, at most",
        ),
        (
            "more than declared",
            v1::CompleteHeader { chunk_size: 10, ..honest.clone() },
            "upload: more than the declared 10 bytes arrived",
        ),
    ];
    for (what, header, want) in cases {
        let status = w.complete_declaring(&c, header, &chunk, &state).unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        assert!(status.message().starts_with(want), "{what}: {}", status.message());
    }
    let scratch = std::fs::read_dir(c.data.join("scratch")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(scratch, 0, "a refused upload left files in scratch");
    w.complete_declaring(&c, honest, &chunk, &state).expect("the honest upload, after all that");
}

/// A well-formed L-BFGS state of a 64x48 job's segment 0 that claims the job's fingerprint.
fn lbfgs_state(fingerprint: &str) -> Vec<u8> {
    let image = tch::Tensor::rand([1, 3, 48, 64], (tch::Kind::Float, tch::Device::Cpu));
    let optim = engine::optim::OptimState::new(proto::params::OptimizerKind::Lbfgs, &image);
    engine::State { next_frame: 2, image, optim, fingerprint: fingerprint.into(), made_by: String::new() }.to_bytes()
}

#[test]
fn uploads_are_checked_for_content_not_only_checksums() {
    // One worker uploads six bad segments in a row here: no quarantine, to see every check.
    let c = Cluster::start("30", &["--max-attempts", "12", "--quarantine-after", "0"]);
    let dir = c.dir.path();
    let id = c.submit(&["--size", "64x48", "--frames", "4", "--segment-frames", "2"]);
    let mut w = FakeWorker::register(&c);
    let (two, one) = (mp4_chunk(dir, 2), mp4_chunk(dir, 1));
    let fingerprint = c.fingerprint(&id, FAKE_WEIGHTS);
    let good_state = state_bytes(&fingerprint, 2, (64, 48));
    // Well formed, right size, right checksum, and poison for whoever resumes it.
    let nan_state = {
        let image = tch::Tensor::full([1, 3, 48, 64], f64::NAN, (tch::Kind::Float, tch::Device::Cpu));
        let optim = engine::optim::OptimState::new(proto::params::OptimizerKind::Adam, &image.zeros_like());
        engine::State { next_frame: 2, image, optim, fingerprint: "test".into(), made_by: String::new() }.to_bytes()
    };
    // H.264 with a key frame and the right frames, in no container: once accepted, and then
    // the stitch failed with EINVAL for ever.
    let annex_b = ffmpeg_chunk(dir, 2, &["-f", "h264"], "raw.h264");
    let cases: [(&str, &[u8], Vec<u8>, &str); 10] = [
        ("garbage chunk", b"not a video at all", good_state.clone(), "chunk: not an MP4 file"),
        ("a raw H.264 stream", &annex_b, good_state.clone(), "chunk: not an MP4 file: FFmpeg reads it as h264"),
        ("a frame short", &one, good_state.clone(), "chunk: the video holds 1 frames, the segment has 2"),
        ("garbage state", &two, b"not a state".to_vec(), "state: not a hand-off state"),
        (
            "a state that resumes elsewhere",
            &two,
            state_bytes(&fingerprint, 3, (64, 48)),
            "state: the state resumes at frame 3, the segment ends at 2",
        ),
        ("a state of another size", &two, state_bytes(&fingerprint, 2, (48, 64)), "state: tensor"),
        // Segment 0's state once went unchecked here (nothing before it to agree with), and the
        // next, honest worker was charged for refusing it.
        (
            "a state of another render",
            &two,
            state_bytes("forged", 2, (64, 48)),
            "state: the state was made by another render",
        ),
        (
            "a state for another optimiser",
            &two,
            lbfgs_state(&fingerprint),
            "state: the state is for the lbfgs optimiser",
        ),
        ("an empty state", &two, Vec::new(), "state: not a hand-off state"),
        (
            "a state holding NaN",
            &two,
            nan_state,
            "state: not a hand-off state: tensor image holds a value that is not finite",
        ),
    ];
    for (i, (what, chunk, state, want)) in cases.into_iter().enumerate() {
        let a = w.acquire(&c);
        assert_eq!((a.job_id.as_str(), a.segment_index), (id.as_str(), 0), "{what}");
        let status = w.complete_with(&c, a.attempt_id, chunk, &state).unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {}", status.message());
        assert!(status.message().starts_with(want), "{what}: {}", status.message());
        // Charged to the attempt that uploaded it; nothing was recorded.
        let job = c.job(&id);
        let attempt = &job.segments[0].attempts[i];
        assert_eq!(attempt.state, v1::AttemptState::Failed as i32, "{what}");
        assert!(attempt.reason.starts_with(want), "{what}: {}", attempt.reason);
        assert_eq!(job.segments_done, 0, "{what}");
    }
    // What the segment must hold is accepted, and readies the next segment.
    let a = w.acquire(&c);
    w.complete_with(&c, a.attempt_id, &two, &good_state).expect("a good upload");
    let next = w.acquire(&c);
    assert_eq!((next.segment_index, next.start_state_attempt_id), (1, a.attempt_id));
    // A chunk that is right on its own but cannot be joined to the first: once a movie of 16
    // packets that decoded 10 frames with 35 errors.
    let baseline = ffmpeg_chunk(dir, 2, &["-profile:v", "baseline", "-f", "mp4"], "baseline.mp4");
    let status = w.complete_with(&c, next.attempt_id, &baseline, &state_bytes(&fingerprint, 4, (64, 48))).unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    let message = status.message();
    assert!(
        message.starts_with("chunk: its format (mp4 H264 profile H264(") && message.contains("Baseline)"),
        "{message}"
    );
    assert!(message.contains("is not the job's first chunk's (mp4 H264 profile H264(High)"), "{message}");
}
